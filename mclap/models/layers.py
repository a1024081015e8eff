"""Building blocks shared by the towers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mclap.errors import ConfigError


class Attention(nnx.Module):
  """Multi-head attention with separate q/k/v projections (CLIP's layout); logits and softmax in
  float32. Through `jax.nn.dot_product_attention`'s default implementation, which in jax 0.10.2 is
  XLA's einsum-softmax-einsum on every backend (cuDNN's fused kernel only when asked for): at
  MusCALL's 77 tokens, q·k and the weighted sum are under 3% of the text tower's matmul FLOPs.

  Queries and keys/values may differ in length (attention pooling asks one query of many tokens).
  """

  def __init__(self, width: int, heads: int, out_features: int | None = None, *, dtype: Any, rngs: nnx.Rngs):
    if width % heads:
      raise ConfigError(f"attention width {width} is not divisible by {heads} heads")
    self.heads = heads
    dense = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)  # noqa: E731
    self.q_proj, self.k_proj, self.v_proj = dense(width, width), dense(width, width), dense(width, width)
    self.out_proj = dense(width, out_features or width)

  def __call__(self, queries: jax.Array, keys: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """queries `[batch, q, width]`, keys `[batch, k, width]`, mask broadcastable to `[batch, heads, q, k]`."""
    split = lambda x: x.reshape(*x.shape[:2], self.heads, -1)  # noqa: E731
    q, k, v = split(self.q_proj(queries)), split(self.k_proj(keys)), split(self.v_proj(keys))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return self.out_proj(out.reshape(*out.shape[:2], -1))


class Conv2d(nnx.Module):
  """NHWC convolution with a square `kernel`, stride, and PyTorch's symmetric padding `kernel // 2`
  (imported weights see identical inputs); parameters `kernel [k, k, cin, cout]` and `bias`.

  A 1x1 convolution is computed as one matrix product over all positions: XLA:CPU differentiates
  that 4-16x faster than the equivalent convolution (BENCHMARKS.md, "Where the time goes").
  """

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, use_bias: bool = False, *, dtype, rngs):
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (kernel, kernel, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,))) if use_bias else None
    self.stride, self.dtype = stride, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or jnp.result_type(x.dtype, self.kernel.dtype)
    x, kernel = x.astype(dtype), self.kernel[...].astype(dtype)
    k, s = kernel.shape[0], self.stride
    if k == 1:
      x = x[:, ::s, ::s]
      y = (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(*x.shape[:-1], kernel.shape[-1])
    else:
      pad = [(k // 2, k // 2)] * 2
      y = jax.lax.conv_general_dilated(x, kernel, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if self.bias is None else y + self.bias[...].astype(dtype)


class BatchNorm(nnx.Module):
  """Batch norm over every axis but the last (channels), with Flax's parameter names and
  arithmetic: statistics and normalisation in float32 (E[x²] - E[x]², clipped at 0), the result in
  the compute dtype, running averages `momentum * old + (1 - momentum) * new` (0.9 = PyTorch's 0.1).

  Flax's `nnx.BatchNorm` stores the running averages with an indexed assignment, which makes JAX
  build an error message (a walk over the whole traced program) per update: ~2.4 s of the
  ResNet train step's 6 s of tracing, paid at every start. Assigning the whole value does not.
  """

  def __init__(self, features: int, *, momentum: float = 0.9, epsilon: float = 1e-5, dtype: Any, rngs: nnx.Rngs):
    rngs.params(), rngs.params()  # Drawn as Flax's BatchNorm draws them: a seed still builds the same model.
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
    self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype

  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      axes = tuple(range(x.ndim - 1))
      mean = x32.mean(axes)
      var = jnp.maximum(0.0, (x32 * x32).mean(axes) - mean * mean)
      self.mean.value = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
      self.var.value = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale[...]) + self.bias[...]
    return y.astype(self.dtype or x.dtype)


def avg_pool(x: jax.Array, size: int) -> jax.Array:
  """Non-overlapping `size` x `size` mean pooling of NHWC (trailing rows/columns that do not fill
  a window are dropped, like VALID padding), as a reshape and a mean: cheaper to differentiate on
  CPU than a reduce-window."""
  if size == 1:
    return x
  b, h, w, c = x.shape
  h, w = h // size, w // size
  return x[:, : h * size, : w * size].reshape(b, h, size, w, size, c).mean(axis=(2, 4))


# `train.remat`: what each block keeps for the backward pass; the rest is recomputed there.
REMAT_POLICIES = {
  "none": None,  # Keep every activation (fastest; most memory).
  "full": jax.checkpoint_policies.nothing_saveable,  # Keep only the block's input.
  "dots": jax.checkpoint_policies.dots_saveable,  # Keep matmul and convolution outputs; recompute norms, activations.
}


def maybe_remat(fn, policy: str):
  """`fn` (one block) rematerialised under the named policy of `REMAT_POLICIES`: memory for compute."""
  if policy not in REMAT_POLICIES:
    raise ConfigError(f"config.train.remat={policy!r}; use one of {', '.join(REMAT_POLICIES)}")
  return fn if policy == "none" else nnx.remat(fn, policy=REMAT_POLICIES[policy])
