"""The dual encoder: audio tower + text tower + linear projections into one joint space."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mclap.data import mel as mel_lib
from mclap.errors import ConfigError
from mclap.models.audio import ModifiedResNet
from mclap.models.text import TextTransformer


class Constant(nnx.Variable):
  """A model value that is saved with the parameters but never trained (a fixed temperature)."""


def _l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class DualEncoder(nnx.Module):
  """`embed_audio`/`embed_text` give L2-normalised float32 embeddings `[batch, projection_dim]`."""

  def __init__(
    self,
    audio: nnx.Module,
    text: nnx.Module,
    *,
    projection_dim: int,
    logit_scale_init: float,
    logit_scale_max: float,
    learn_temperature: bool,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.audio, self.text = audio, text
    self.audio_projection = nnx.Linear(audio.output_dim, projection_dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.text_projection = nnx.Linear(text.output_dim, projection_dim, use_bias=False, dtype=dtype, rngs=rngs)
    variable = nnx.Param if learn_temperature else Constant
    self.logit_scale_param = variable(jnp.asarray(logit_scale_init, jnp.float32))
    self.logit_scale_max = logit_scale_max

  def embed_audio(self, mel: jax.Array, train: bool = False) -> jax.Array:
    return _l2_normalize(self.audio_projection(self.audio(mel, train)))

  def embed_text(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    return _l2_normalize(self.text_projection(self.text(tokens, token_mask)))

  def logit_scale(self) -> jax.Array:
    """exp of the (learned) log-scale, clamped at exp(logit_scale_max) = 100 as in CLIP/MusCALL."""
    return jnp.exp(jnp.minimum(self.logit_scale_param[...], self.logit_scale_max))


def build_model(
  config: ml_collections.ConfigDict, *, vocab_size: int, rngs: nnx.Rngs, dtype: Any | None = None
) -> DualEncoder:
  """The dual encoder of `config.model`, sized for `config.data` crops."""
  dtype = jnp.dtype(dtype or config.train.dtype)
  audio_cfg, text_cfg = config.model.audio, config.model.text
  if audio_cfg.kind != "modified_resnet":
    raise ConfigError(f"config.model.audio.kind={audio_cfg.kind!r}; available: modified_resnet")
  if text_cfg.kind != "transformer":
    raise ConfigError(f"config.model.text.kind={text_cfg.kind!r}; available: transformer")
  audio = ModifiedResNet(
    n_mels=config.data.mel.n_mels,
    frames=mel_lib.num_frames(config.data.crop_seconds, config.data.mel),
    width=audio_cfg.width,
    layers=tuple(audio_cfg.layers),
    pooling=audio_cfg.pooling,
    heads=audio_cfg.heads,
    output_dim=audio_cfg.output_dim,
    remat=config.train.remat,
    dtype=dtype,
    rngs=rngs,
  )
  text = TextTransformer(
    vocab_size=vocab_size,
    max_len=config.data.max_tokens,
    width=text_cfg.width,
    layers=text_cfg.layers,
    heads=text_cfg.heads,
    mask=text_cfg.mask,
    pooling=text_cfg.pooling,
    remat=config.train.remat,
    dtype=dtype,
    rngs=rngs,
  )
  return DualEncoder(
    audio,
    text,
    projection_dim=config.model.projection_dim,
    logit_scale_init=config.model.logit_scale_init,
    logit_scale_max=config.model.logit_scale_max,
    learn_temperature=config.model.learn_temperature,
    dtype=dtype,
    rngs=rngs,
  )
