"""mclap: contrastive music audio–language models (MusCALL family) in JAX/Flax."""

__version__ = "0.2.0"


def load(directory, batch_size: int = 16, max_seconds: float = 600.0):
  """Loads an inference bundle as an `mclap.serve.inference.Model` (see that module). Imported lazily:
  `import mclap` stays light for the jobs that do not need JAX."""
  from mclap.serve import inference

  return inference.load(directory, batch_size=batch_size, max_seconds=max_seconds)
