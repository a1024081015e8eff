"""mclap: contrastive music audio–language models (MusCALL family) in JAX/Flax."""

__version__ = "0.1.0"
