"""The dual encoder: audio tower + text tower + projection heads into one joint space, and the
temperature. What an objective adds for training (an SSL head, a discriminator ...) is the
objective's (`mclap.objectives`), not the model's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mclap.errors import ConfigError
from mclap.models import bert
from mclap.models.audio import ModifiedResNet, SimpleCNN
from mclap.models.feature_tower import FeatureTower
from mclap.models.htsat import HTSAT
from mclap.models.spec import ModelSpec
from mclap.models.text import TextTransformer


class Constant(nnx.Variable):
  """A model value that is saved with the parameters but never trained (a fixed temperature)."""


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def projection_head(
  features: int, out: int, head: ml_collections.ConfigDict | dict, *, dtype: Any, rngs: nnx.Rngs
) -> nnx.Module | None:
  """A tower's map into the joint space (None: the tower's own space, `identity`).

  `linear`: bias-free (MusCALL). `mlp`: layers through `hidden` with `activation` between (Sideras
  et al.: hidden (1024,), tanh; Seth's generator G_a: three hidden layers, four in all, ReLU).
  """
  kind = head["kind"]
  if kind == "identity":
    if features != out:
      raise ConfigError(
        f"an identity head keeps the tower's {features} dimensions, but model.projection_dim={out}; "
        f"set it to {features} (or 0: the text tower's width)"
      )
    return None
  if kind == "linear":
    return nnx.Linear(features, out, use_bias=False, dtype=dtype, rngs=rngs)
  if kind != "mlp":
    raise ConfigError(f"a head's kind={kind!r}; use linear, mlp or identity")
  if head["activation"] not in ACTIVATIONS:
    raise ConfigError(f"a head's activation={head['activation']!r}; use {' or '.join(ACTIVATIONS)}")
  return mlp([features, *head["hidden"], out], ACTIVATIONS[head["activation"]], dtype=dtype, rngs=rngs)


def mlp(widths: list[int], activation: Callable, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Sequential:
  """Linear layers (with bias) through `widths`, `activation` between them."""
  layers = []
  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    layers += [activation] if i else []
    layers.append(nnx.Linear(a, b, dtype=dtype, rngs=rngs))
  return nnx.Sequential(*layers)


def l2_normalize(x: jax.Array) -> jax.Array:
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
    audio_head: dict,
    text_head: dict,
    logit_scale_init: float,
    logit_scale_max: float,
    learn_temperature: bool,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.audio, self.text = audio, text
    self.audio_projection = projection_head(audio.output_dim, projection_dim, audio_head, dtype=dtype, rngs=rngs)
    self.text_projection = projection_head(text.output_dim, projection_dim, text_head, dtype=dtype, rngs=rngs)
    variable = nnx.Param if learn_temperature else Constant
    self.logit_scale_param = variable(jnp.asarray(logit_scale_init, jnp.float32))
    self.logit_scale_max = logit_scale_max

  def audio_features(self, mel: jax.Array, train: bool = False) -> jax.Array:
    """The audio tower's output; `train` puts batch norm in training mode (batch statistics, and
    the running ones updated)."""
    return self.audio(mel, train)

  def project_audio(self, features: jax.Array) -> jax.Array:
    return l2_normalize(features if self.audio_projection is None else self.audio_projection(features))

  def embed_audio(self, mel: jax.Array, train: bool = False) -> jax.Array:
    return self.project_audio(self.audio_features(mel, train))

  @property
  def clip_ndim(self) -> int:
    """Dimensions of one clip's audio input: `[n_mels, frames]`, or `[4, n_mels, frames]` (the four
    views of a fused HTS-AT)."""
    return 3 if getattr(self.audio, "fusion", False) else 2

  def embed_clips(self, mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inference embeddings of clips given as `mel [clips, crops, n_mels, frames]`: the joint
    embedding (normalised mean of the crops' normalised embeddings) and the audio tower's features
    (their mean), `[clips, dim]` each."""
    clips, crops = mel.shape[:2]
    features = self.audio_features(mel.reshape(clips * crops, *mel.shape[2:]), train=False)
    joint = self.project_audio(features)
    per_clip = lambda x: x.reshape(clips, crops, x.shape[-1]).mean(axis=1)  # noqa: E731
    return l2_normalize(per_clip(joint)), per_clip(features)

  def text_features(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    return self.text(tokens, token_mask)

  def project_text(self, features: jax.Array) -> jax.Array:
    return l2_normalize(features if self.text_projection is None else self.text_projection(features))

  def embed_text(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    return self.project_text(self.text_features(tokens, token_mask))

  def logit_scale(self) -> jax.Array:
    """exp of the (learned) log-scale, clamped at exp(logit_scale_max) = 100 as in CLIP/MusCALL."""
    return jnp.exp(jnp.minimum(self.logit_scale_param[...], self.logit_scale_max))


def _audio_tower(spec: ModelSpec, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
  kind, args = spec.audio["kind"], {k: v for k, v in spec.audio.items() if k != "kind"}
  if kind == "simple_cnn":
    return SimpleCNN(**args, dtype=dtype, rngs=rngs)
  if kind == "features":
    return FeatureTower(**args, dim=spec.n_mels, frames=spec.crop_frames, remat=spec.remat, dtype=dtype, rngs=rngs)
  towers = {"modified_resnet": ModifiedResNet, "htsat": HTSAT}
  if kind not in towers:
    raise ConfigError(f"config.model.audio.kind={kind!r}; available: simple_cnn, features, {', '.join(towers)}")
  return towers[kind](**args, n_mels=spec.n_mels, frames=spec.crop_frames, remat=spec.remat, dtype=dtype, rngs=rngs)


def _text_tower(spec: ModelSpec, dtype: Any, rngs: nnx.Rngs) -> nnx.Module:
  kind, args = spec.text["kind"], {k: v for k, v in spec.text.items() if k != "kind"}
  if kind == "bert":
    return bert.BertEncoder(**args, remat=spec.remat, dtype=dtype, rngs=rngs)
  if kind != "transformer":
    raise ConfigError(f"config.model.text.kind={kind!r}; available: transformer, bert")
  return TextTransformer(**args, remat=spec.remat, dtype=dtype, rngs=rngs)


def build_model(spec: ModelSpec, rngs: nnx.Rngs) -> DualEncoder:
  """The dual encoder of `spec`, randomly initialised (pretrained weights are loaded separately)."""
  dtype = jnp.dtype(spec.dtype)
  audio = _audio_tower(spec, dtype, rngs)
  text = _text_tower(spec, dtype, rngs)
  return DualEncoder(
    audio,
    text,
    projection_dim=spec.projection_dim,
    audio_head=spec.audio_head,
    text_head=spec.text_head,
    logit_scale_init=spec.logit_scale_init,
    logit_scale_max=spec.logit_scale_max,
    learn_temperature=spec.learn_temperature,
    dtype=dtype,
    rngs=rngs,
  )
