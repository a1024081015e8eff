import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp

from mclap import losses, parallel


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
