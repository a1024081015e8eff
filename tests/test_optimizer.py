"""The optimizer: per-tower learning-rate factors."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT
from flax import nnx

from mclap import cli
from mclap.training import trainer


def test_tower_lr_scale_multiplies_that_towers_updates_only():
  config = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  model = {name: {"w": jnp.ones((3, 2))} for name in ("audio", "text", "text_projection")}
  params = nnx.State({"model": model, "heads": {"ssl_head": {"w": jnp.ones((3, 2))}}})
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)

  def updates(text_scale):
    config.model.text.lr_scale = text_scale
    tx = trainer.make_optimizer(config, 100)
    opt_state = tx.init(params)
    for _ in range(3):
      u, opt_state = tx.update(grads, opt_state, params)
    u = jax.tree.map(np.asarray, u)
    return {**u["model"], **u["heads"]}

  plain, scaled, stopped = updates(1.0), updates(0.1), updates(0.0)
  np.testing.assert_allclose(scaled["text"]["w"], 0.1 * plain["text"]["w"], rtol=1e-6)
  np.testing.assert_array_equal(stopped["text"]["w"], 0.0)
  for name in ("audio", "text_projection", "ssl_head"):
    np.testing.assert_array_equal(scaled[name]["w"], plain[name]["w"])
    assert np.abs(plain[name]["w"]).max() > 0


def test_sgd_with_momentum_and_weight_decay_matches_hand_computation():
  """torch.optim.SGD's rule: g' = g + wd * w (matrices only), v = mu * v + g', w -= lr * v."""
  config = cli.load_config(str(ROOT / "configs/generator.py:demo"))
  config.optim.update(momentum=0.9, weight_decay=0.1, lr=0.01)
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full((2,), 0.5)}
  tx = trainer.make_optimizer(config, 100)
  opt_state = tx.init(params)
  w, b, vw, vb = 2.0, 2.0, 0.0, 0.0
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    vw, vb = 0.9 * vw + 0.5 + 0.1 * w, 0.9 * vb + 0.5
    w, b = w - 0.01 * vw, b - 0.01 * vb
  np.testing.assert_allclose(params["w"], w, rtol=1e-6)
  np.testing.assert_allclose(params["b"], b, rtol=1e-6)
