"""Matmul and convolution FLOPs of a JAX program, counted from its jaxpr: the numerator of MFU.

XLA's `cost_analysis()` of a compiled program counts what the backend's own kernels do, so on a GPU
it misses every convolution that became a cuDNN custom call (the ResNet train step read 1.45
GFLOP per example there against 9.55 on a CPU). The jaxpr is the same on every backend: each
`dot_general` and `conv_general_dilated` in it (forward, and the transposed ones of the backward
pass) counts 2 FLOPs per multiply-add, padding taps left out as XLA counts them; elementwise work,
norms and softmax are left out, as MFU conventionally does. Work under `shard_map` counts once per
device of its manual axes, a `scan` body once per iteration, a `cond` by its costliest branch.
Recomputation (`train.remat`, feature caching's second forward pass) counts: what the device does.

`mclap.train` logs the rate per device (`train/tflop_per_s_per_device`) and the benchmarks divide it
by a peak measured in the same run (MFU).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.extend import core as jax_core


class Uncountable(ValueError):
  """A loop of matrix products whose trip count the jaxpr does not hold (`while`)."""


def count(fn, *args, **kwargs) -> float:
  """FLOPs of the matrix products and convolutions of `fn(*args, **kwargs)`, traced, not run."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


class StepCounter:
  """FLOPs of each call `step(state, batch, ...)` of a jitted train step, counted once per distinct
  batch shape (a token bucket's length; the state keeps its shapes through a run, and keying on its
  ~850 arrays cost 1.3 ms a step): `jax.jit` keeps the trace that counting makes for the call that
  follows, so the count costs a walk of the jaxpr, not a second trace. None where the step cannot
  be counted."""

  def __init__(self, step):
    self.step, self.known = step, {}

  def __call__(self, state, batch, *rest) -> float | None:
    shapes = tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch))
    if shapes not in self.known:
      try:
        self.known[shapes] = count(self.step, state, batch, *rest)
      except Uncountable:  # No rate rather than a wrong one.
        self.known[shapes] = None
    return self.known[shapes]


def jaxpr_flops(jaxpr) -> float:
  """The count of `jaxpr` and the jaxprs inside it (calls, remat, custom derivatives, loops)."""
  total = 0.0
  for eqn in _live(jaxpr):
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "while":
      if any(jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params)):
        raise Uncountable("a while loop holds matrix products; its trip count is not known to the count")
    elif name == "cond":
      total += max(jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
    else:
      times = 1
      if name == "scan":
        times = eqn.params["length"]
      elif name == "shard_map":
        mesh = eqn.params["mesh"]
        times = math.prod(mesh.shape[axis] for axis in eqn.params.get("newly_manual_axes", mesh.axis_names))
      total += times * sum(jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


def _live(jaxpr) -> list:
  """The equations whose results are used (or that have effects): a traced `jax.vjp` keeps the
  forward pass it does not return, which XLA drops."""
  used = {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  live = []
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in used for v in eqn.outvars):
      live.append(eqn)
      used.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
  return live[::-1]


def _dot_flops(eqn) -> float:
  """2 x every lhs element (batch, free and contracted dimensions) x rhs's free dimensions."""
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  return 2.0 * math.prod(lhs) * math.prod(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))


def _conv_flops(eqn) -> float:
  """2 x output batch x output features x kernel input features x, per spatial dimension, the
  (output position, kernel tap) pairs that read the input rather than its padding."""
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  out = eqn.outvars[0].aval.shape
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  pairs = 1
  for d in range(len(lhs_spec) - 2):
    size, taps, positions = lhs[lhs_spec[2 + d]], rhs[rhs_spec[2 + d]], out[out_spec[2 + d]]
    lo = p["padding"][d][0]
    index = (
      np.arange(positions)[:, None] * p["window_strides"][d] + np.arange(taps)[None, :] * p["rhs_dilation"][d] - lo
    )
    dilation = p["lhs_dilation"][d]
    pairs *= int(((index >= 0) & (index <= (size - 1) * dilation) & (index % dilation == 0)).sum())
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * pairs
