"""CLIP-style text Transformer: pre-LayerNorm blocks, causal or bidirectional mask, and the GELU
of the model it holds: exact (MusCALL's own TextTransformer) or CLIP's sigmoid approximation
(`quick_gelu`: OpenAI CLIP's text encoder, which MusCALL can train as `CLIPTextModel`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mclap.errors import ConfigError
from mclap.models.layers import Attention, maybe_remat

ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


class Block(nnx.Module):
  def __init__(self, width: int, heads: int, activation: str, *, dtype: Any, rngs: nnx.Rngs):
    self.activation = ACTIVATIONS[activation]
    self.ln_1 = nnx.LayerNorm(width, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)
    self.attention = Attention(width, heads, dtype=dtype, rngs=rngs)
    self.ln_2 = nnx.LayerNorm(width, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)
    self.mlp_in = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = self.ln_1(x).astype(x.dtype)
    x = x + self.attention(h, h, mask)
    h = self.activation(self.mlp_in(self.ln_2(x).astype(x.dtype)))
    return x + self.mlp_out(h)


class TextTransformer(nnx.Module):
  def __init__(
    self,
    *,
    vocab_size: int,
    max_len: int,
    width: int,
    layers: int,
    heads: int,
    mask: str,
    pooling: str,
    remat: str,
    dtype: Any,
    rngs: nnx.Rngs,
    activation: str = "gelu",  # Specs written before the key held MusCALL's TextTransformer.
  ):
    if mask not in ("causal", "bidirectional"):
      raise ConfigError(f"config.model.text.mask={mask!r}; use causal or bidirectional")
    if activation not in ACTIVATIONS:
      raise ConfigError(f"config.model.text.activation={activation!r}; use {' or '.join(ACTIVATIONS)}")
    if pooling not in ("eot", "first", "mean"):
      raise ConfigError(f"config.model.text.pooling={pooling!r}; use eot, first or mean")
    self.max_len, self.causal, self.pooling, self.remat, self.dtype = max_len, mask == "causal", pooling, remat, dtype
    self.token_embedding = nnx.Embed(vocab_size, width, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.positional_embedding = nnx.Param(0.01 * jax.random.normal(rngs.params(), (max_len, width)))
    self.blocks = nnx.List([Block(width, heads, activation, dtype=dtype, rngs=rngs) for _ in range(layers)])
    self.ln_final = nnx.LayerNorm(width, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)
    self.output_dim = width

  def __call__(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    """tokens, token_mask `[batch, length]` (mask 1 on real tokens) -> features `[batch, width]`.

    `eot` pools the last real token (CLIP's end-of-text; [SEP] for WordPiece vocabularies).
    """
    length = tokens.shape[1]
    if length > self.max_len:
      raise ConfigError(f"{length} tokens exceed the text tower's {self.max_len} positions (config.data.max_tokens)")
    x = (self.token_embedding(tokens) + self.positional_embedding[:length]).astype(self.dtype or jnp.float32)
    valid = token_mask.astype(bool)
    attend = valid[:, None, None, :]
    if self.causal:
      attend = attend & jnp.tril(jnp.ones((length, length), bool))[None, None]
    for block in self.blocks:
      x = maybe_remat(lambda b, y: b(y, attend), self.remat)(block, x)
    x = self.ln_final(x)
    if self.pooling == "eot":
      return x[jnp.arange(x.shape[0]), valid.sum(axis=1) - 1]
    if self.pooling == "first":
      return x[:, 0]
    weights = valid[..., None].astype(x.dtype)
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
