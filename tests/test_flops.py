"""The FLOP count of mclap/training/flops.py (the training log's TFLOP/s, the benchmarks' MFU, on
every backend): each convolution and matrix product against XLA's own cost analysis of the same
program and hand counts, and a whole text tower against the closed form of a Transformer's matmuls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mclap import parallel
from mclap.models.text import TextTransformer
from mclap.training import flops

CONVS = {  # input, kernel, strides, padding, lhs dilation, rhs dilation, feature groups, layout
  "same": ((2, 9, 11, 4), (3, 3, 4, 5), (1, 1), "SAME", (1, 1), (1, 1), 1, ("NHWC", "HWIO", "NHWC")),
  "strided": ((2, 9, 11, 4), (3, 3, 4, 5), (2, 2), [(1, 1), (1, 1)], (1, 1), (1, 1), 1, ("NHWC", "HWIO", "NHWC")),
  "uneven": ((2, 9, 11, 4), (3, 2, 4, 6), (2, 1), [(0, 2), (3, 1)], (1, 1), (2, 1), 1, ("NHWC", "HWIO", "NHWC")),
  "grouped": ((2, 4, 9, 11), (6, 2, 3, 3), (1, 1), "SAME", (1, 1), (1, 1), 2, ("NCHW", "OIHW", "NCHW")),
  "lhs_dilated": ((2, 9, 11, 4), (3, 3, 4, 5), (1, 1), [(2, 2), (2, 2)], (2, 1), (1, 1), 1, ("NHWC", "HWIO", "NHWC")),
}


def xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).cost_analysis()["flops"]


@pytest.mark.parametrize("name", CONVS)
def test_convolution_and_its_gradients_count_as_xla_does(name):
  shape, kernel, strides, padding, lhs_dilation, rhs_dilation, groups, layout = CONVS[name]
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (shape, kernel))

  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x, w, strides, padding, lhs_dilation, rhs_dilation, layout, feature_group_count=groups
    )

  cotangent = jnp.ones_like(conv(x, w))
  # The input and kernel gradients alone: jax.vjp also traces the forward pass it does not
  # return, which XLA (and the count) drop.
  gradients = lambda x, w, g: jax.vjp(conv, x, w)[1](g)  # noqa: E731
  assert flops.count(conv, x, w) == xla_flops(conv, x, w)
  assert flops.count(gradients, x, w, cotangent) == xla_flops(gradients, x, w, cotangent)


def test_padding_taps_are_not_counted():
  # 3x3 "SAME" on a 3x3 single-channel image: per axis, the 3 positions see 2, 3, 2 real taps.
  x, w = jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
  assert flops.count(conv, x, w) == 2 * 7 * 7


def test_batched_matmul_scan_cond_and_shard_map():
  a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 4))
  matmul = lambda a, b: jnp.einsum("bik,bkj->bij", a, b)  # noqa: E731
  assert flops.count(matmul, a, b) == 2 * 3 * 5 * 7 * 4 == xla_flops(matmul, a, b)

  def scanned(a, b):
    return jax.lax.scan(lambda carry, _: (carry, matmul(a, b)), 0.0, length=6)[1]

  assert flops.count(scanned, a, b) == 6 * 2 * 3 * 5 * 7 * 4

  def branches(a, b, flag):
    return jax.lax.cond(flag, lambda: matmul(a, b).sum() + (a[0] @ a[0].T).sum(), lambda: matmul(a, b).sum())

  assert flops.count(branches, a, b, True) == 2 * 3 * 5 * 7 * 4 + 2 * 5 * 7 * 5

  mesh = parallel.make_mesh({"data": -1, "model": 1})
  x, w = jnp.ones((16, 32)), jnp.ones((32, 8))
  sharded = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
  assert jax.device_count() == 8
  assert flops.count(sharded, x, w) == flops.count(lambda x, w: x @ w, x, w) == 2 * 16 * 32 * 8

  def loop(a):
    return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ c[0], c[1] + 1), (a, 0))[0]

  with pytest.raises(flops.Uncountable, match="while loop"):
    flops.count(loop, jnp.ones((4, 4)))


def test_text_tower_forward_and_backward_match_the_closed_form():
  batch, length, width, layers, heads = 2, 6, 32, 2, 4
  tower = TextTransformer(
    vocab_size=50, max_len=length, width=width, layers=layers, heads=heads, mask="causal",
    pooling="eot", remat="none", dtype=None, rngs=nnx.Rngs(0),
  )  # fmt: skip
  graphdef, params = nnx.split(tower)
  tokens = jnp.ones((batch, length), jnp.int32)
  loss = lambda p: nnx.merge(graphdef, p)(tokens, jnp.ones_like(tokens)).sum()  # noqa: E731
  tokens_total = batch * length
  # Per layer: q, k, v, output (4 w^2) and the 4x MLP (8 w^2) per token; q k^T and weights x v.
  forward = layers * (2 * tokens_total * 12 * width**2 + 2 * 2 * batch * length * length * width)
  assert flops.count(loss, params) == forward
  # Backward: both operands of every product need a gradient (each is a parameter, or an activation
  # that descends from the trained token embedding): twice the forward, 3x in all.
  assert flops.count(jax.grad(loss), params) == 3 * forward
