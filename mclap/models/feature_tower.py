"""The audio tower over precomputed features (a frozen foundation model's frames).

The features arrive as the pipeline crops them, `[batch, dim, frames]` (one frame for a vector
per clip). The tower maps each frame to `width` (none when `width` is 0: the frames as they are)
and pools over frames: `mean`; `attention`, CLIP's attention pooling (a learned positional
embedding, the mean frame as the one query) into `output_dim`; or `transformer`, `layers`
pre-LayerNorm blocks over the frames (with a learned positional embedding), a final LayerNorm,
then the mean. The projection head into the joint space follows, as for every tower.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mclap.errors import ConfigError
from mclap.models.audio import AttentionPool
from mclap.models.layers import maybe_remat
from mclap.models.text import Block

POOLINGS = ("mean", "attention", "transformer")


class FeatureTower(nnx.Module):
  def __init__(
    self,
    *,
    dim: int,
    frames: int,
    width: int,
    pooling: str,
    layers: int,
    heads: int,
    output_dim: int,
    remat: str,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    if pooling not in POOLINGS:
      raise ConfigError(f"config.model.audio.pooling={pooling!r}; a features tower pools by {', '.join(POOLINGS)}")
    self.dim, self.frames, self.pooling, self.remat, self.dtype = dim, frames, pooling, remat, dtype
    self.input = nnx.Linear(dim, width, dtype=dtype, rngs=rngs) if width else None
    width = width or dim
    attention, transformer = pooling == "attention", pooling == "transformer"
    if transformer and layers < 1:
      raise ConfigError(f"config.model.audio.layers={layers}; transformer pooling needs at least one block")
    self.pool = AttentionPool(frames, width, heads, output_dim, dtype=dtype, rngs=rngs) if attention else None
    self.positional_embedding = (
      nnx.Param(jax.random.normal(rngs.params(), (frames, width)) * 0.01) if transformer else None
    )
    self.blocks = (
      nnx.List([Block(width, heads, "gelu", dtype=dtype, rngs=rngs) for _ in range(layers)]) if transformer else None
    )
    self.norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=jnp.float32, rngs=rngs) if transformer else None
    self.output_dim = output_dim if attention else width

  def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
    """features `[batch, dim, frames]` -> `[batch, output_dim]` (float32)."""
    del train  # No batch norm or dropout.
    if features.shape[1:] != (self.dim, self.frames):
      raise ConfigError(
        f"features tower built for features of shape [{self.dim}, {self.frames}] (config.data.features, "
        f"config.data.crop_seconds) but got {list(features.shape[1:])}; make the config match the data"
      )
    x = jnp.swapaxes(features, 1, 2).astype(self.dtype or jnp.float32)
    if self.input is not None:
      x = self.input(x)
    if self.pooling == "attention":
      return self.pool(x).astype(jnp.float32)
    if self.pooling == "transformer":
      x = x + self.positional_embedding[...].astype(x.dtype)
      for block in self.blocks:
        x = maybe_remat(lambda b, y: b(y, None), self.remat)(block, x)
      x = self.norm(x)
    return x.astype(jnp.float32).mean(axis=1)
