"""Objectives: which loss trains, and how its inputs come from the model and the batch.

The towers run under jit with sharding propagation over the data-sharded batch; the loss runs
per device under `shard_map` (`parallel.sharded_loss`): the first `num_batch_args` inputs are
the batch-sharded embeddings, the rest replicated scalars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from mclap import losses
from mclap.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Objective:
  loss_fn: Callable  # loss_fn(*batch_args, *replicated_args, axis_name=...) -> scalar.
  num_batch_args: int
  inputs: Callable[[Any, dict], tuple]  # (model, batch) -> the loss's positional arguments.


def _pair(model, batch) -> tuple:
  return model.embed_audio(batch["mel"], train=True), model.embed_text(batch["tokens"], batch["token_mask"])


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


OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict], Objective]] = {
  "infonce": _infonce,
  "weighted": _weighted,
  "siglip": _siglip,
  "ssl": _ssl,
}


def build(config: ml_collections.ConfigDict) -> Objective:
  if config.loss.name not in OBJECTIVES:
    raise ConfigError(f"config.loss.name={config.loss.name!r}; available: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[config.loss.name](config)
