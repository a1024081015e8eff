import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import expit, logsumexp

from mclap import parallel
from mclap.objectives import losses


def _normalized(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_infonce(a, t, scale):
  """Reference: both directions written out as log-softmax cross-entropies, in float64."""
  logits = scale * a @ t.T
  a2t = -np.mean(np.diag(logits) - logsumexp(logits, axis=1))
  t2a = -np.mean(np.diag(logits) - logsumexp(logits, axis=0))  # Columns: text rows vs all audio.
  return a2t, t2a


@pytest.mark.parametrize("n", [1, 2, 5, 8, 17, 64])
def test_infonce_matches_numpy(n):
  rng = np.random.default_rng(n)
  a, t = _normalized(rng, n, 12), _normalized(rng, n, 12)
  a2t, t2a = numpy_infonce(a, t, 14.3)
  ours = losses.infonce_loss(jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), 14.3)
  np.testing.assert_allclose(ours, 0.5 * (a2t + t2a), rtol=1e-5)


def test_infonce_directions_are_not_interchangeable():
  """Swapping the towers swaps the directions; an asymmetric case separates them."""
  rng = np.random.default_rng(0)
  a, t = _normalized(rng, 6, 4), _normalized(rng, 6, 4)
  a2t, t2a = numpy_infonce(a, t, 10.0)
  assert abs(a2t - t2a) > 1e-3
  np.testing.assert_allclose(losses.infonce_loss(jnp.asarray(t), jnp.asarray(a), 10.0), 0.5 * (a2t + t2a), rtol=1e-5)


def test_infonce_gradient_check():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    a, t = jnp.asarray(_normalized(rng, 5, 3)), jnp.asarray(_normalized(rng, 5, 3))
    check_grads(lambda a, t, s: losses.infonce_loss(a, t, s), (a, t, jnp.asarray(7.0)), order=1, modes=["rev"])


@pytest.mark.parametrize("per_device", [1, 3])
def test_sharded_infonce_equals_single_device_value_and_gradients(per_device):
  assert jax.device_count() == 8
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  rng = np.random.default_rng(per_device)
  n = 8 * per_device
  a, t = jnp.asarray(_normalized(rng, n, 16), jnp.float32), jnp.asarray(_normalized(rng, n, 16), jnp.float32)
  scale = jnp.asarray(20.0)
  sharded = parallel.sharded_loss(losses.infonce_loss, mesh)
  a_s = jax.device_put(a, parallel.batch_sharding(mesh))
  t_s = jax.device_put(t, parallel.batch_sharding(mesh))
  value, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(a_s, t_s, scale)
  ref_value, ref_grads = jax.value_and_grad(losses.infonce_loss, argnums=(0, 1, 2))(a, t, scale)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def numpy_weighted_infonce(a, t, scale, s, kappa):
  """Reference in float64, loops and all, from the formula in docs/papers.md (MusCALL, content-aware weighting)."""
  n = len(a)
  sim = s @ s.T
  means = np.array([np.mean([sim[i, j] for j in range(n) if j != i]) for i in range(n)])
  w = np.exp(means / means.sum() / kappa)
  logits = scale * a @ t.T
  a2t = logsumexp(logits, axis=1) - np.diag(logits)
  t2a = logsumexp(logits, axis=0) - np.diag(logits)
  return 0.5 * ((w * a2t).sum() / w.sum() + (w * t2a).sum() / w.sum())


def numpy_nt_xent(z1, z2, temperature):
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    positive = (i + n) % (2 * n)
    logits = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
    pos_logit = z[i] @ z[positive] / temperature
    total += logsumexp(logits) - pos_logit
  return total / (2 * n)


def numpy_siglip(a, t, audio_ids, text_ids, scale, bias):
  """Reference: -log sigmoid(z (scale a.t + bias)) for every pair, as a loop in float64; z = 1
  where the ids match."""
  total = 0.0
  for i, audio_id in enumerate(audio_ids):
    for j, text_id in enumerate(text_ids):
      z = 1.0 if audio_id == text_id else -1.0
      total += np.log1p(np.exp(-z * (scale * a[i] @ t[j] + bias)))
  return total / len(a)


def _clips_with_texts(clips, k, seed, d=12):
  """Clips and K texts each (text row j belongs to clip j // K); with K > 1, ids shared between
  clips too (the same clip drawn twice in a batch)."""
  rng = np.random.default_rng(seed)
  a, t = _normalized(rng, clips, d), _normalized(rng, clips * k, d)
  audio_ids = np.arange(clips) if k == 1 else rng.integers(0, max(clips // 2, 1), size=clips)
  return a, t, audio_ids, np.repeat(audio_ids, k)


def _inputs(n, seed, d=12):
  rng = np.random.default_rng(seed)
  return _normalized(rng, n, d), _normalized(rng, n, d), _normalized(rng, n, 7)


@pytest.mark.parametrize("n", [2, 5, 8, 17])
def test_weighted_infonce_matches_numpy(n):
  a, t, s = _inputs(n, n)
  s = np.abs(s)  # Positive similarities, as between real captions: the row means' sum is far from 0.
  s /= np.linalg.norm(s, axis=1, keepdims=True)
  ours = losses.weighted_infonce_loss(*(jnp.asarray(x, jnp.float32) for x in (a, t)), 14.3, jnp.asarray(s), 0.01)
  np.testing.assert_allclose(ours, numpy_weighted_infonce(a, t, 14.3, s, 0.01), rtol=1e-5)


def test_weighted_infonce_with_equal_weights_is_infonce():
  a, t, _ = _inputs(6, 0)
  same = np.tile(_normalized(np.random.default_rng(1), 1, 7), (6, 1))  # Identical captions: equal weights.
  ours = losses.weighted_infonce_loss(jnp.asarray(a), jnp.asarray(t), 9.0, jnp.asarray(same), 0.01)
  np.testing.assert_allclose(ours, losses.infonce_loss(jnp.asarray(a), jnp.asarray(t), 9.0), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 17])
def test_nt_xent_matches_numpy(n):
  z1, z2, _ = _inputs(n, n)
  z1, z2 = 3.0 * z1, 0.5 * z2  # Not normalised: the loss normalises.
  ours = losses.nt_xent_loss(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), 0.5)
  np.testing.assert_allclose(ours, numpy_nt_xent(z1, z2, 0.5), rtol=1e-5)


@pytest.mark.parametrize("clips, k", [(1, 1), (2, 1), (5, 1), (17, 1), (3, 3), (8, 2)])
def test_siglip_matches_numpy(clips, k):
  """One text per clip, distinct ids (SigLIP); several texts per clip, and clips sharing ids."""
  a, t, audio_ids, text_ids = _clips_with_texts(clips, k, clips * 10 + k)
  inputs = (jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(audio_ids), jnp.asarray(text_ids))
  ours = losses.siglip_loss(*inputs, 10.0, -10.0)
  np.testing.assert_allclose(ours, numpy_siglip(a, t, audio_ids, text_ids, 10.0, -10.0), rtol=1e-5)


def test_new_losses_gradient_checks():
  with jax.enable_x64(True):
    a, t, s = (jnp.asarray(x) for x in _inputs(5, 3, d=3))
    s = jnp.abs(s) / jnp.linalg.norm(s, axis=1, keepdims=True)
    check_grads(lambda a, t, k: losses.weighted_infonce_loss(a, t, k, s, 0.05), (a, t, 7.0), 1, modes=["rev"])
    check_grads(lambda a, t: losses.nt_xent_loss(a, t, 0.5), (a, t), 1, modes=["rev"])
    a, t, audio_ids, text_ids = _clips_with_texts(4, 2, 0, d=3)
    sigmoid = lambda a, t, k, b: losses.siglip_loss(a, t, audio_ids, text_ids, k, b)  # noqa: E731
    check_grads(sigmoid, (jnp.asarray(a), jnp.asarray(t), 7.0, -3.0), 1, modes=["rev"])


@pytest.mark.parametrize("per_device", [1, 3])
@pytest.mark.parametrize(
  "name, fn, batch_args, scalars",
  [
    (
      "weighted",
      lambda a, t, s, k, axis_name=None: losses.weighted_infonce_loss(a, t, k, s, 0.02, axis_name),
      3,
      (20.0,),
    ),
    ("nt_xent", lambda a, t, axis_name=None: losses.nt_xent_loss(a, t, 0.5, axis_name), 2, ()),
  ],
)
def test_sharded_losses_equal_single_device_value_and_gradients(per_device, name, fn, batch_args, scalars):
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  a, t, s = _inputs(8 * per_device, per_device, d=16)
  s = np.abs(s) / np.linalg.norm(np.abs(s), axis=1, keepdims=True)
  args = [jnp.asarray(x, jnp.float32) for x in (a, t, s)[:batch_args]] + [jnp.asarray(x) for x in scalars]
  placed = [jax.device_put(x, parallel.batch_sharding(mesh)) for x in args[:batch_args]] + args[batch_args:]
  argnums = tuple(range(len(args)))
  sharded = parallel.sharded_loss(fn, mesh, num_batch_args=batch_args)
  value, grads = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(*placed)
  ref_value, ref_grads = jax.value_and_grad(fn, argnums=argnums)(*args)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, err_msg=name)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("per_device, k", [(1, 1), (3, 1), (2, 3)])
def test_sharded_sigmoid_ring_equals_single_device_value_and_gradients(per_device, k):
  """The text blocks travel round the ring with their ids: positives on other devices count."""
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  a, t, audio_ids, text_ids = _clips_with_texts(8 * per_device, k, per_device, d=16)
  args = [jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(audio_ids), jnp.asarray(text_ids)]
  placed = [jax.device_put(x, parallel.batch_sharding(mesh)) for x in args]
  scalars = [jnp.asarray(10.0), jnp.asarray(-5.0)]
  argnums = (0, 1, 4, 5)  # Not the ids.
  sharded = parallel.sharded_loss(losses.siglip_loss, mesh, num_batch_args=4)
  value, grads = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(*placed, *scalars)
  ref_value, ref_grads = jax.value_and_grad(losses.siglip_loss, argnums=argnums)(*args, *scalars)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def numpy_supcon(a, t, audio_ids, text_ids, scale):
  """Reference: per anchor, minus the mean log-probability of its positives, written as loops."""
  logits = scale * a @ t.T
  directions = []
  for logit_rows, anchor_ids, candidate_ids in ((logits, audio_ids, text_ids), (logits.T, text_ids, audio_ids)):
    per_anchor = []
    for row, anchor_id in zip(logit_rows, anchor_ids):
      log_probs = row - logsumexp(row)
      per_anchor.append(-np.mean([log_probs[j] for j, c in enumerate(candidate_ids) if c == anchor_id]))
    directions.append(np.mean(per_anchor))
  return 0.5 * sum(directions)


@pytest.mark.parametrize("clips, k", [(1, 1), (3, 1), (3, 3), (5, 2), (8, 3)])
def test_supervised_contrastive_matches_numpy(clips, k):
  """K texts per clip (text row j belongs to clip j // K), and ids shared between clips too."""
  rng = np.random.default_rng(clips * 10 + k)
  a, t = _normalized(rng, clips, 12), _normalized(rng, clips * k, 12)
  audio_ids = rng.integers(0, max(clips // 2, 1), size=clips)
  text_ids = np.repeat(audio_ids, k)
  ours = losses.supervised_contrastive_loss(*(jnp.asarray(x) for x in (a, t, audio_ids, text_ids)), 12.0)
  np.testing.assert_allclose(ours, numpy_supcon(a, t, audio_ids, text_ids, 12.0), rtol=1e-5)


def test_supervised_contrastive_with_unique_ids_is_infonce():
  a, t, _ = _inputs(7, 7)
  ids = jnp.arange(7)
  ours = losses.supervised_contrastive_loss(jnp.asarray(a), jnp.asarray(t), ids, ids, 12.0)
  np.testing.assert_allclose(ours, losses.infonce_loss(jnp.asarray(a), jnp.asarray(t), 12.0), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_binary_cross_entropy_matches_numpy(n):
  rng = np.random.default_rng(n)
  logits, labels = 4 * rng.normal(size=n), rng.integers(0, 2, size=n)
  p = expit(logits)
  expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  np.testing.assert_allclose(losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_triplet_matches_numpy(n):
  rng = np.random.default_rng(n)
  x, p, q = (rng.normal(size=(n, 6)) for _ in range(3))
  cos = lambda u, v: (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))  # noqa: E731
  expected = np.maximum(0.0, 0.4 - cos(x, p) + cos(x, q)).mean()
  np.testing.assert_allclose(
    losses.triplet_loss(jnp.asarray(x), jnp.asarray(p), jnp.asarray(q), 0.4), expected, rtol=1e-5
  )


def test_supcon_triplet_and_bce_gradient_checks_and_sharding():
  with jax.enable_x64(True):
    a, t, s = (jnp.asarray(x) for x in _inputs(6, 4, d=3))
    texts = jnp.asarray(_normalized(np.random.default_rng(1), 12, 3))
    audio_ids, text_ids = jnp.asarray([0, 0, 1, 2, 3, 3]), jnp.asarray([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    check_grads(
      lambda a, t, k: losses.supervised_contrastive_loss(a, t, audio_ids, text_ids, k),
      (a, texts, 5.0),
      1,
      modes=["rev"],
    )
    check_grads(lambda a, t: losses.triplet_loss(a, t, jnp.roll(t, 1, 0), 0.8), (a, t), 1, modes=["rev"])
    check_grads(lambda x: losses.binary_cross_entropy(x, audio_ids % 2), (a[:, 0] * 3,), 1, modes=["rev"])
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh))  # noqa: E731
  # Two texts per clip; clip ids shared by rows on different devices.
  rng = np.random.default_rng(5)
  a, t = (jnp.asarray(_normalized(rng, n, 8), jnp.float32) for n in (16, 32))
  audio_ids = jnp.roll(jnp.asarray(np.repeat(np.arange(8), 2)), 1)
  text_ids = jnp.repeat(audio_ids, 2)
  supcon = parallel.sharded_loss(losses.supervised_contrastive_loss, mesh, num_batch_args=4)
  value, grads = jax.jit(jax.value_and_grad(supcon, argnums=(0, 1)))(
    put(a), put(t), put(audio_ids), put(text_ids), jnp.asarray(9.0)
  )
  ref, ref_grads = jax.value_and_grad(losses.supervised_contrastive_loss, argnums=(0, 1))(
    a, t, audio_ids, text_ids, 9.0
  )
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  triplet = parallel.sharded_loss(lambda x, y, z, axis_name=None: losses.triplet_loss(x, y, z, 0.5, axis_name), mesh, 3)
  np.testing.assert_allclose(
    jax.jit(triplet)(put(a), put(t[:16]), put(jnp.roll(t[:16], 3, 0))),
    losses.triplet_loss(a, t[:16], jnp.roll(t[:16], 3, 0), 0.5),
    rtol=1e-5,
  )
  bce = parallel.sharded_loss(losses.binary_cross_entropy, mesh, 2)
  logits, labels = 3 * a[:, 0], audio_ids % 2
  np.testing.assert_allclose(
    jax.jit(bce)(put(logits), put(labels)), losses.binary_cross_entropy(logits, labels), rtol=1e-5
  )
