"""Training internals: the train state and jitted step, checkpoints, stop and non-finite guards,
memory measurement, TensorBoard events. `python -m mclap.train` (`mclap/train.py`) is the job."""
