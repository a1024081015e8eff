"""Contrastive objectives: pure functions of embeddings.

With `axis_name` (inside `shard_map` over the data axis) each device all-gathers the other
devices' embeddings, with gradient, and computes the loss of its own rows against all columns
(the "local loss"): memory grows as B_local x B_global, and value and gradients equal the
single-device loss on the full batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _gather(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """All rows of `x` across the axis, and the global index of this device's first row."""
  if axis_name is None:
    return x, jnp.zeros((), jnp.int32)
  return jax.lax.all_gather(x, axis_name, tiled=True), jax.lax.axis_index(axis_name) * x.shape[0]


def _wide(x: jax.Array) -> jax.Array:
  """At least float32 (bfloat16 logits are widened; float64 stays, for gradient checks)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(_wide(logits), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _pair_cross_entropies(
  audio_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, axis_name: str | None
) -> tuple[jax.Array, jax.Array]:
  """Per local row: the audio→text and text→audio cross-entropies against the global batch,
  row i of each tower forming the positive pair."""
  all_audio, offset = _gather(audio_emb, axis_name)
  all_text, _ = _gather(text_emb, axis_name)
  labels = offset + jnp.arange(audio_emb.shape[0])
  audio_to_text = _cross_entropy(logit_scale * audio_emb @ all_text.T, labels)
  text_to_audio = _cross_entropy(logit_scale * text_emb @ all_audio.T, labels)
  return audio_to_text, text_to_audio


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
  audio_to_text, text_to_audio = _pair_cross_entropies(audio_emb, text_emb, logit_scale, axis_name)
  loss = 0.5 * (audio_to_text.mean() + text_to_audio.mean())
  return jax.lax.pmean(loss, axis_name) if axis_name is not None else loss


def _sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Sum over the devices of the axis (identity outside `shard_map`)."""
  return jax.lax.psum(x, axis_name) if axis_name is not None else x


def _mean(per_row: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean of per-row values over the global batch."""
  return _sum(per_row.sum(), axis_name) / _sum(jnp.asarray(per_row.shape[0], per_row.dtype), axis_name)


def weighted_infonce_loss(
  audio_emb: jax.Array,
  text_emb: jax.Array,
  logit_scale: jax.Array,
  sentence_emb: jax.Array,
  kappa: float = 0.01,
  axis_name: str | None = None,
) -> jax.Array:
  """MusCALL's content-aware weighted InfoNCE, as its released code computes it.

  Captions that resemble the rest of the batch are weighted up: with S the cosine similarity of
  the captions' Sentence-BERT embeddings over the global batch, m_i = mean_{j != i} S_ij,
  w_i = exp((m_i / sum_k m_k) / kappa), and each direction's cross-entropies are averaged with
  weights w (sum_i w_i l_i / sum_i w_i); the loss is the mean of the two directions. The
  weights carry no gradient.

  Args:
    sentence_emb: `[batch, d]` L2-normalised caption embeddings (all-MiniLM-L6-v2 in MusCALL);
      each device builds only its rows of S from the gathered embeddings.
  """
  all_sentences, offset = _gather(jax.lax.stop_gradient(sentence_emb), axis_name)
  batch, rows = all_sentences.shape[0], jnp.arange(audio_emb.shape[0])
  if batch == 1:
    return infonce_loss(audio_emb, text_emb, logit_scale, axis_name)
  sim = _wide(jax.lax.stop_gradient(sentence_emb)) @ _wide(all_sentences).T
  row_mean = (sim.sum(axis=1) - sim[rows, offset + rows]) / (batch - 1)
  weights = jnp.exp(row_mean / _sum(row_mean.sum(), axis_name) / kappa)
  audio_to_text, text_to_audio = _pair_cross_entropies(audio_emb, text_emb, logit_scale, axis_name)
  weighted = _sum((weights * (audio_to_text + text_to_audio)).sum(), axis_name)
  return 0.5 * weighted / _sum(weights.sum(), axis_name)


def nt_xent_loss(z1: jax.Array, z2: jax.Array, temperature: float, axis_name: str | None = None) -> jax.Array:
  """SimCLR's NT-Xent on two views: each of the 2N embeddings is an anchor whose positive is the
  other view of its example, against the 2N - 2 other embeddings; cosine similarity over
  `temperature`, mean over the 2N anchors."""
  normalize = lambda z: z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)  # noqa: E731
  z1, z2 = normalize(_wide(z1)), normalize(_wide(z2))
  all_z1, offset = _gather(z1, axis_name)
  all_z2, _ = _gather(z2, axis_name)
  batch, rows = all_z1.shape[0], offset + jnp.arange(z1.shape[0])
  candidates = jnp.concatenate([all_z1, all_z2]).T  # [d, 2N]: view 1 columns, then view 2.
  total = 0.0
  for anchors, own, positive in ((z1, rows, batch + rows), (z2, batch + rows, rows)):
    logits = anchors @ candidates / temperature
    logits = jnp.where(jnp.arange(2 * batch)[None] == own[:, None], -jnp.inf, logits)
    total = total + _cross_entropy(logits, positive).sum()
  return _sum(total, axis_name) / (2 * batch)


def _sigmoid_block_loss(
  audio_emb: jax.Array,
  text_block: jax.Array,
  audio_ids: jax.Array,
  text_ids: jax.Array,
  logit_scale: jax.Array,
  logit_bias: jax.Array,
) -> jax.Array:
  """-sum log sigmoid(z * logits) over one block of pairs; z = +1 where the ids match, else -1."""
  logits = _wide(logit_scale * audio_emb @ text_block.T + logit_bias)
  signs = jnp.where(audio_ids[:, None] == text_ids[None, :], 1.0, -1.0).astype(logits.dtype)
  return -jax.nn.log_sigmoid(signs * logits).sum()


def siglip_loss(
  audio_emb: jax.Array,
  text_emb: jax.Array,
  audio_ids: jax.Array,
  text_ids: jax.Array,
  logit_scale: jax.Array,
  logit_bias: jax.Array,
  axis_name: str | None = None,
) -> jax.Array:
  """SigLIP's pairwise sigmoid loss with any number of positives per clip:
  -1/N sum_ij log sigmoid(z_ij (scale * a_i . t_j + bias)) over the N clips and all texts, z_ij = 1
  where audio i and text j carry the same clip id (the clip's own texts, `data.texts_per_clip` of
  them, and those of the same clip drawn again in the batch) and -1 elsewhere. One text per clip
  and distinct ids give SigLIP's loss.

  Sharded, the text blocks travel round the ring of devices (`ppermute`) with their ids, forward
  and again backward (`_sigmoid_ring`): each device only ever holds one `B_local x T_local` block
  of logits and one foreign text block, whatever the number of devices; value and gradients equal
  the unchunked loss.
  """
  if axis_name is None:
    block = _sigmoid_block_loss(audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias)
    return block / audio_emb.shape[0]
  return _sigmoid_ring(audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _sigmoid_ring(audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias, axis_name):
  return _sigmoid_ring_forward(audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias, axis_name)[0]


def _ring_step(x, axis_name: str):
  devices = jax.lax.axis_size(axis_name)
  return jax.lax.ppermute(x, axis_name, [(i, (i + 1) % devices) for i in range(devices)])


def _sigmoid_ring_forward(audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias, axis_name):
  devices = jax.lax.axis_size(axis_name)
  block = lambda texts, ids: _sigmoid_block_loss(audio_emb, texts, audio_ids, ids, logit_scale, logit_bias)  # noqa: E731

  def visit(_, carry):  # A foreign text block arrives with its ids.
    total, texts, ids = carry
    texts, ids = _ring_step(texts, axis_name), _ring_step(ids, axis_name)
    return total + block(texts, ids), texts, ids

  # A loop: one foreign block alive at a time.
  total, _, _ = jax.lax.fori_loop(0, devices - 1, visit, (block(text_emb, text_ids), text_emb, text_ids))
  loss = jax.lax.psum(total, axis_name) / (devices * audio_emb.shape[0])
  return loss, (audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias)


def _sigmoid_ring_backward(axis_name, residuals, loss_grad):
  """The text blocks go round the ring again, each with the gradient its visits add up; after the
  full circle both are home. Autodiff of the forward loop would keep every visiting block alive for
  the backward pass (memory T_global x dim); this keeps one."""
  audio_emb, text_emb, audio_ids, text_ids, logit_scale, logit_bias = residuals
  devices = jax.lax.axis_size(axis_name)
  # The loss is the same on every device; each block's share of its cotangent is per device.
  weight = jax.lax.pcast(loss_grad / (devices * audio_emb.shape[0]), axis_name, to="varying")

  def block_grads(texts, ids):
    block = lambda a, t, s, b: _sigmoid_block_loss(a, t, audio_ids, ids, s, b)  # noqa: E731
    return jax.vjp(block, audio_emb, texts, logit_scale, logit_bias)[1](weight.astype(jnp.float32))

  def visit(_, carry):
    audio_grad, scale_grad, bias_grad, texts, ids, text_grad = carry
    texts, ids, text_grad = (_ring_step(x, axis_name) for x in (texts, ids, text_grad))
    da, dt, ds, db = block_grads(texts, ids)
    return audio_grad + da, scale_grad + ds, bias_grad + db, texts, ids, text_grad + dt

  da, dt, ds, db = block_grads(text_emb, text_ids)
  carry = jax.lax.fori_loop(0, devices - 1, visit, (da, ds, db, text_emb, text_ids, dt))
  audio_grad, scale_grad, bias_grad, _, _, text_grad = carry
  # One more hop brings each text block's gradient home. Each device returns its share of the
  # replicated scale and bias gradients; JAX sums them across devices. Ids have no gradient.
  return audio_grad, _ring_step(text_grad, axis_name), None, None, scale_grad, bias_grad


_sigmoid_ring.defvjp(_sigmoid_ring_forward, _sigmoid_ring_backward)


def supervised_contrastive_loss(
  audio_emb: jax.Array,
  text_emb: jax.Array,
  audio_ids: jax.Array,
  text_ids: jax.Array,
  logit_scale: jax.Array,
  axis_name: str | None = None,
) -> jax.Array:
  """Sideras et al.'s SCL: every text with its audio's id (the sentences of that clip) is a
  positive of the audio, and the reverse: per anchor, minus the mean over its positives of the
  log-softmax against the other tower's global batch; each direction averaged over its anchors,
  then the two directions. The towers may have different row counts (K sentences per clip); the
  ids travel with the gathered rows, so positives on other devices count."""
  all_audio, _ = _gather(audio_emb, axis_name)
  all_text, _ = _gather(text_emb, axis_name)
  all_audio_ids, _ = _gather(audio_ids, axis_name)
  all_text_ids, _ = _gather(text_ids, axis_name)

  def direction(anchors, anchor_ids, candidates, candidate_ids):
    positive = (anchor_ids[:, None] == candidate_ids[None, :]).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(_wide(logit_scale * anchors @ candidates.T), axis=-1)
    per_anchor = -(log_probs * positive).sum(axis=1) / jnp.maximum(positive.sum(axis=1), 1.0)
    return _mean(per_anchor, axis_name)

  audio_to_text = direction(audio_emb, audio_ids, all_text, all_text_ids)
  return 0.5 * (audio_to_text + direction(text_emb, text_ids, all_audio, all_audio_ids))


def triplet_loss(
  anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float, axis_name: str | None = None
) -> jax.Array:
  """Max-margin (hinge) triplet loss on cosine similarity, mean over the global batch:
  max(0, margin - cos(anchor, positive) + cos(anchor, negative)) (Choi et al.; Sideras's STL)."""
  cos = lambda x, y: (x * y).sum(-1) / jnp.maximum(jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1), 1e-12)  # noqa: E731
  return _mean(jnp.maximum(0.0, margin - cos(anchor, positive) + cos(anchor, negative)), axis_name)


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Mean over the global batch of -[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]: Sideras's
  matching loss (SMM) and both sides of the GAN variant's adversarial game."""
  logits, labels = _wide(logits), labels.astype(jnp.float32)
  per_row = -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
  return _mean(per_row, axis_name)
