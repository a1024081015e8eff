"""Contrastive objectives: pure functions of embeddings.

With `axis_name` (inside `shard_map` over the data axis) each device all-gathers the other
devices' embeddings, with gradient, and computes the loss of its own rows against all columns
(the "local loss"): memory grows as B_local x B_global, and value and gradients equal the
single-device loss on the full batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _gather(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """All rows of `x` across the axis, and the global index of this device's first row."""
  if axis_name is None:
    return x, jnp.zeros((), jnp.int32)
  return jax.lax.all_gather(x, axis_name, tiled=True), jax.lax.axis_index(axis_name) * x.shape[0]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def infonce_loss(
  audio_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, axis_name: str | None = None
) -> jax.Array:
  """Symmetric InfoNCE (MusCALL's `clip_loss`): mean of audio→text and text→audio cross-entropy.

  Args:
    audio_emb, text_emb: `[batch, dim]` embeddings, row i of each forming a positive pair
      (normalised by the model; the loss does not renormalise).
    logit_scale: scalar multiplier of the cosine logits (already exponentiated).
    axis_name: mesh axis the batch is sharded over, when called inside `shard_map`.
  Returns:
    scalar loss averaged over the global batch.
  """
  all_audio, offset = _gather(audio_emb, axis_name)
  all_text, _ = _gather(text_emb, axis_name)
  labels = offset + jnp.arange(audio_emb.shape[0])
  audio_to_text = _cross_entropy(logit_scale * audio_emb @ all_text.T, labels)
  text_to_audio = _cross_entropy(logit_scale * text_emb @ all_audio.T, labels)
  loss = 0.5 * (audio_to_text.mean() + text_to_audio.mean())
  return jax.lax.pmean(loss, axis_name) if axis_name is not None else loss
