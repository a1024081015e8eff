"""Building blocks shared by the towers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mclap.errors import ConfigError


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v projections (CLIP's layout); softmax in float32.

  Queries and keys/values may differ in length (attention pooling asks one query of many tokens).
  """

  def __init__(self, width: int, heads: int, out_features: int | None = None, *, dtype: Any, rngs: nnx.Rngs):
    if width % heads:
      raise ConfigError(f"attention width {width} is not divisible by {heads} heads")
    self.heads = heads
    dense = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)  # noqa: E731
    self.q_proj, self.k_proj, self.v_proj = dense(width, width), dense(width, width), dense(width, width)
    self.out_proj = dense(width, out_features or width)

  def __call__(self, queries: jax.Array, keys: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """queries `[batch, q, width]`, keys `[batch, k, width]`, mask broadcastable to `[batch, heads, q, k]`."""
    split = lambda x: x.reshape(*x.shape[:2], self.heads, -1)  # noqa: E731
    q, k, v = split(self.q_proj(queries)), split(self.k_proj(keys)), split(self.v_proj(keys))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return self.out_proj(out.reshape(*out.shape[:2], -1))


def maybe_remat(fn, enabled: bool):
  """Recompute `fn`'s activations in the backward pass when `enabled` (memory for compute)."""
  return nnx.remat(fn) if enabled else fn
