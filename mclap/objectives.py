"""Objectives: which loss trains, and how its inputs come from the model and the batch.

The towers run under jit with sharding propagation over the data-sharded batch; the loss runs
per device under `shard_map` (`parallel.sharded_loss`): the first `num_batch_args` inputs are
the batch-sharded embeddings, the rest replicated scalars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mclap import losses
from mclap.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Objective:
  loss_fn: Callable  # loss_fn(*batch_args, *replicated_args, axis_name=...) -> scalar.
  num_batch_args: int
  inputs: Callable[[Any, dict], tuple]  # (model, batch) -> the loss's positional arguments.
  # GAN-style training: the discriminator's own objective, minimised over the model's
  # discriminator parameters (and only those) before each update of the rest.
  discriminator: Objective | None = None


def _require(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  if config.data[key] != value:
    raise ConfigError(f"config.loss.name={config.loss.name!r} needs config.data.{key}={value!r}")


def _pair(model, batch) -> tuple:
  return model.embed_audio(batch["mel"], train=True), model.embed_text(batch["tokens"], batch["token_mask"])


def _embed_text_groups(model, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
  """`[batch, K, tokens]` -> `[batch, K, dim]` in one tower pass; rows stay on their device."""
  batch, k, length = tokens.shape
  flat = model.embed_text(tokens.reshape(batch * k, length), token_mask.reshape(batch * k, length))
  return flat.reshape(batch, k, -1)


def _with_other_text(model, batch) -> tuple:
  """Audio, text and other-text embeddings; both texts go through the text tower together."""
  stack = lambda key: jnp.stack([batch[key], batch[f"other_{key}"]], axis=1)  # noqa: E731
  texts = _embed_text_groups(model, stack("tokens"), stack("token_mask"))
  return model.embed_audio(batch["mel"], train=True), texts[:, 0], texts[:, 1]


def _infonce(config: ml_collections.ConfigDict) -> Objective:
  return Objective(losses.infonce_loss, 2, lambda m, b: (*_pair(m, b), m.logit_scale()))


def _weighted(config: ml_collections.ConfigDict) -> Objective:
  def inputs(model, batch):
    audio, text = _pair(model, batch)
    return audio, text, model.embed_sentences(batch["tokens"], batch["token_mask"]), model.logit_scale()

  def loss_fn(audio, text, sentences, scale, axis_name=None):
    return losses.weighted_infonce_loss(audio, text, scale, sentences, config.loss.kappa, axis_name)

  return Objective(loss_fn, 3, inputs)


def _ssl(config: ml_collections.ConfigDict) -> Objective:
  """MusCALL_SSL: lambda * NT-Xent over two augmented views of each crop (audio tower + projection
  MLP) + (1 - lambda) * InfoNCE between the first view and its caption. Both views go through the
  tower as one batch, so batch norm sees them together."""

  def inputs(model, batch):
    features = model.audio_features(jnp.concatenate([batch["mel"], batch["mel_view2"]]), train=True)
    first, second = jnp.split(features, 2)
    text = model.embed_text(batch["tokens"], batch["token_mask"])
    return model.project_audio(first), text, model.ssl_head(first), model.ssl_head(second), model.logit_scale()

  def loss_fn(audio, text, z1, z2, scale, axis_name=None):
    ssl = losses.nt_xent_loss(z1, z2, config.loss.temperature, axis_name)
    return config.loss.weight * ssl + (1 - config.loss.weight) * losses.infonce_loss(audio, text, scale, axis_name)

  return Objective(loss_fn, 4, inputs)


def _siglip(config: ml_collections.ConfigDict) -> Objective:
  return Objective(losses.siglip_loss, 2, lambda m, b: (*_pair(m, b), m.logit_scale(), m.logit_bias()))


def _scl(config: ml_collections.ConfigDict) -> Objective:
  """Sideras's supervised contrastive loss over the K sentences drawn per clip."""
  if config.data.texts_per_clip < 2:
    raise ConfigError("config.loss.name='scl' needs several positives per clip: config.data.texts_per_clip >= 2")

  def inputs(model, batch):
    texts = _embed_text_groups(model, batch["tokens"], batch["token_mask"])
    clips, k, dim = texts.shape
    ids = batch["row"]  # The clip's row in the global batch; its K texts carry it.
    audio = model.embed_audio(batch["mel"], train=True)
    return audio, texts.reshape(clips * k, dim), ids, jnp.repeat(ids, k), model.logit_scale()

  return Objective(losses.supervised_contrastive_loss, 4, inputs)


def _triplet(config: ml_collections.ConfigDict) -> Objective:
  """Hinge on (audio, a positive text, a negative text): Sideras's STL over sentences, Choi et
  al.'s loss over tags."""
  _require(config, "other_text", "negative")

  def loss_fn(audio, positive, negative, axis_name=None):
    return losses.triplet_loss(audio, positive, negative, config.loss.margin, axis_name)

  return Objective(loss_fn, 3, _with_other_text)


def _matching(config: ml_collections.ConfigDict) -> Objective:
  """Sideras's SMM: InfoNCE plus a matching head told true pairs (p = 0.5) from random captions."""
  _require(config, "other_text", "match")

  def inputs(model, batch):
    audio, text, other = _with_other_text(model, batch)
    return audio, text, model.match(audio, other), batch["other_match"], model.logit_scale()

  def loss_fn(audio, text, match_logits, match_labels, scale, axis_name=None):
    matching = losses.binary_cross_entropy(match_logits, match_labels, axis_name)
    return losses.infonce_loss(audio, text, scale, axis_name) + config.loss.matching_weight * matching

  return Objective(loss_fn, 4, inputs)


def _adversarial(config: ml_collections.ConfigDict) -> Objective:
  """Seth's GAN variant: the discriminator learns to tell text-tower embeddings (real) from
  generated audio embeddings (fake); the generator minimises InfoNCE plus the non-saturating
  adversarial loss -log D(G(a))."""

  def discriminator_inputs(model, batch):
    audio, text = (jax.lax.stop_gradient(x) for x in _pair(model, batch))
    return model.discriminate(text), model.discriminate(audio)

  def discriminator_loss(real, fake, axis_name=None):
    bce = losses.binary_cross_entropy
    return bce(real, jnp.ones_like(real), axis_name) + bce(fake, jnp.zeros_like(fake), axis_name)

  def inputs(model, batch):
    audio, text = _pair(model, batch)
    return audio, text, model.discriminate(audio), model.logit_scale()

  def loss_fn(audio, text, fake, scale, axis_name=None):
    fooled = losses.binary_cross_entropy(fake, jnp.ones_like(fake), axis_name)
    return losses.infonce_loss(audio, text, scale, axis_name) + config.loss.adversarial_weight * fooled

  return Objective(loss_fn, 3, inputs, Objective(discriminator_loss, 2, discriminator_inputs))


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


def build(config: ml_collections.ConfigDict) -> Objective:
  if config.loss.name not in OBJECTIVES:
    raise ConfigError(f"config.loss.name={config.loss.name!r}; available: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[config.loss.name](config)
