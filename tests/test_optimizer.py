"""The optimizer: per-tower learning-rate factors."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT
from flax import nnx

from mclap import cli, trainer


def test_tower_lr_scale_multiplies_that_towers_updates_only():
  config = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  params = nnx.State({name: {"w": jnp.ones((3, 2))} for name in ("audio", "text", "text_projection")})
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)

  def updates(text_scale):
    config.model.text.lr_scale = text_scale
    tx = trainer.make_optimizer(config, 100)
    opt_state = tx.init(params)
    for _ in range(3):
      u, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(np.asarray, u)

  plain, scaled, stopped = updates(1.0), updates(0.1), updates(0.0)
  np.testing.assert_allclose(scaled["text"]["w"], 0.1 * plain["text"]["w"], rtol=1e-6)
  np.testing.assert_array_equal(stopped["text"]["w"], 0.0)
  for name in ("audio", "text_projection"):
    np.testing.assert_array_equal(scaled[name]["w"], plain[name]["w"])
    assert np.abs(plain[name]["w"]).max() > 0
