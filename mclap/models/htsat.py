"""HTS-AT (Chen et al., 2022), the Swin-Transformer audio tower of LAION-CLAP, in Flax NNX.

The log-mel `[batch, n_mels, frames]` is batch-normalised per mel bin, stretched in time to
`spec_size * freq_ratio` frames (bicubic, corners aligned, as PyTorch's `interpolate`) and folded
into a `spec_size`² image (`freq_ratio = spec_size // n_mels` time slices stacked along frequency),
cut into non-overlapping patches, then passed through Swin stages: window attention with a
learned relative-position bias, every second block on windows shifted by half a window (with the
mask that keeps the wrapped-around regions apart), and patch merging (2x2 neighbours
concatenated, normalised, halved in width) between stages. The tower's features are the mean of
the last stage's normalised tokens: what CLAP projects (its "latent output"; the token-semantic
classification head of the AudioSet model is not part of it). Stages whose grid is no larger than
a window attend over the whole grid, unshifted, as the original does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mclap.errors import ConfigError
from mclap.models.layers import BatchNorm, maybe_remat


@functools.lru_cache(maxsize=8)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` weights of PyTorch's bicubic resampling with `align_corners=True` (Keys'
  cubic convolution, a = -0.75, edge samples repeated beyond the ends)."""
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
  weights = np.zeros((n_out, n_in))
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for out in range(n_out):
    position = scale * out
    base = int(np.floor(position))
    t = position - base
    for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      weights[out, min(max(base + offset, 0), n_in - 1)] += w
  return weights.astype(np.float32)


@functools.lru_cache(maxsize=8)
def relative_position_index(window: int) -> np.ndarray:
  """`[window², window²]` index into the `(2 window - 1)²` relative-position bias table."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return relative[..., 0] * (2 * window - 1) + relative[..., 1]


@functools.lru_cache(maxsize=16)
def shifted_window_mask(size: int, window: int, shift: int) -> np.ndarray:
  """`[windows, window², window²]` additive mask of shifted-window attention: tokens of a window
  that came from different regions of the unshifted grid do not attend to each other (-100, as
  the original adds)."""
  bounds = lambda i: int(i >= size - window) + int(i >= size - shift)  # noqa: E731
  region = np.array([[3 * bounds(h) + bounds(w) for w in range(size)] for h in range(size)])
  windows = partition(region[None, :, :, None], window)[..., 0]
  return np.where(windows[:, :, None] != windows[:, None, :], -100.0, 0.0).astype(np.float32)


def partition(x, window: int):
  """`[batch, h, w, c]` -> `[batch * windows, window², c]`, windows in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def merge(windows: jax.Array, window: int, h: int, w: int) -> jax.Array:
  """The inverse of `partition`."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def _layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, rngs=rngs)


class WindowAttention(nnx.Module):
  """Multi-head attention inside each window, plus the relative-position bias (and a mask);
  logits and softmax in float32. Written out rather than through `layers.Attention`: the bias and
  mask differ per window, which `jax.nn.dot_product_attention` cannot broadcast."""

  def __init__(self, dim: int, heads: int, window: int, *, dtype: Any, rngs: nnx.Rngs):
    if dim % heads:
      raise ConfigError(f"HTS-AT width {dim} is not divisible by {heads} heads")
    dense = lambda: nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)  # noqa: E731
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = dense(), dense(), dense(), dense()
    init = nnx.initializers.truncated_normal(0.02)
    self.relative_position_bias = nnx.Param(init(rngs.params(), ((2 * window - 1) ** 2, heads)))
    self.heads, self.window = heads, window

  def __call__(self, x: jax.Array, windows: int, mask: np.ndarray | None) -> jax.Array:
    """x `[batch * windows, tokens, dim]`; mask `[windows, tokens, tokens]` or None."""
    n, tokens, dim = x.shape
    split = lambda y: y.reshape(n // windows, windows, tokens, self.heads, dim // self.heads)  # noqa: E731
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(dim // self.heads)
    index = relative_position_index(self.window).reshape(-1)
    bias = self.relative_position_bias[...][index].reshape(tokens, tokens, self.heads).transpose(2, 0, 1)
    logits = logits + bias if mask is None else logits + bias + mask[:, None]
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v).reshape(n, tokens, dim)
    return self.out_proj(out)


class SwinBlock(nnx.Module):
  """Pre-norm window attention and MLP (exact-erf GELU) on a `size`² grid, with residuals."""

  def __init__(
    self, dim: int, heads: int, size: int, window: int, shift: int, mlp_ratio: float, eps: float, *, dtype, rngs
  ):
    if size <= window:  # The whole grid is one window, and nothing wraps around.
      window, shift = size, 0
    if size % window:
      raise ConfigError(f"an HTS-AT grid of {size}x{size} tokens does not tile into {window}x{window} windows")
    self.norm1 = _layer_norm(dim, eps, rngs)
    self.attention = WindowAttention(dim, heads, window, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, eps, rngs)
    self.fc1 = nnx.Linear(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(int(dim * mlp_ratio), dim, dtype=dtype, rngs=rngs)
    self.size, self.window, self.shift = size, window, shift

  def __call__(self, x: jax.Array) -> jax.Array:
    """x `[batch, size, size, dim]`."""
    h = self.norm1(x).astype(x.dtype)
    if self.shift:
      h = jnp.roll(h, (-self.shift, -self.shift), axis=(1, 2))
    mask = shifted_window_mask(self.size, self.window, self.shift) if self.shift else None
    h = self.attention(partition(h, self.window), (self.size // self.window) ** 2, mask)
    h = merge(h, self.window, self.size, self.size)
    if self.shift:
      h = jnp.roll(h, (self.shift, self.shift), axis=(1, 2))
    x = x + h
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x).astype(x.dtype)), approximate=False))


class PatchMerging(nnx.Module):
  """2x2 neighbouring tokens concatenated (in Swin's order), normalised and mapped to twice the width."""

  def __init__(self, dim: int, eps: float, *, dtype, rngs):
    self.norm = _layer_norm(4 * dim, eps, rngs)
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return self.reduction(self.norm(x).astype(x.dtype))


class FeatureFusion(nnx.Module):
  """Attentional feature fusion (Dai et al., 2021), as CLAP's fused models join the local views to
  the global one: a sigmoid weight from a per-position and a per-clip bottleneck (1x1 convolutions
  with batch norm) of their sum mixes the two, `2 w x + 2 (1 - w) y`."""

  def __init__(self, channels: int, ratio: int, *, dtype: Any, rngs: nnx.Rngs):
    inner = channels // ratio
    dense = lambda a, b: nnx.Linear(a, b, dtype=dtype, rngs=rngs)  # noqa: E731  A 1x1 convolution.
    norm = lambda c: BatchNorm(c, dtype=dtype, rngs=rngs)  # noqa: E731
    self.local_in, self.local_norm_in = dense(channels, inner), norm(inner)
    self.local_out, self.local_norm_out = dense(inner, channels), norm(channels)
    self.global_in, self.global_norm_in = dense(channels, inner), norm(inner)
    self.global_out, self.global_norm_out = dense(inner, channels), norm(channels)

  def __call__(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    """x, y `[batch, h, w, channels]`."""
    both = x + y
    mode = not train

    def bottleneck(z, first, first_norm, second, second_norm):
      return second_norm(second(jax.nn.relu(first_norm(first(z), mode))), mode)

    per_position = bottleneck(both, self.local_in, self.local_norm_in, self.local_out, self.local_norm_out)
    per_clip = bottleneck(
      both.mean(axis=(1, 2), keepdims=True), self.global_in, self.global_norm_in, self.global_out, self.global_norm_out
    )
    weight = jax.nn.sigmoid((per_position + per_clip).astype(jnp.float32)).astype(x.dtype)
    return 2 * x * weight + 2 * y * (1 - weight)


class HTSAT(nnx.Module):
  """log-mel `[batch, n_mels, frames]` -> features `[batch, embed_dim * 2^(stages - 1)]`.

  With `fusion` (CLAP's fused models) the input is four views `[batch, 4, n_mels, frames]`: the
  whole clip shrunk to the model's length, then three local windows of it; a clip whose views are
  all equal (one no longer than the model's length, repeated four times by its front end) has
  nothing to fuse and is embedded from the first alone, as the original does for such clips.
  """

  def __init__(
    self,
    *,
    n_mels: int,
    frames: int,
    spec_size: int,
    patch_size: int,
    embed_dim: int,
    depths: Sequence[int],
    heads: Sequence[int],
    window_size: int,
    mlp_ratio: float,
    remat: str,
    dtype: Any,
    rngs: nnx.Rngs,
    fusion: bool = False,
  ):
    self.freq_ratio = spec_size // n_mels
    if self.freq_ratio < 1 or n_mels * self.freq_ratio != spec_size:
      raise ConfigError(f"HTS-AT's spec_size {spec_size} must be a multiple of the {n_mels} mel bins")
    if frames > spec_size * self.freq_ratio:
      raise ConfigError(
        f"HTS-AT with spec_size {spec_size} takes at most {spec_size * self.freq_ratio} frames of {n_mels} mels, "
        f"the crops have {frames}; use shorter crops (config.data.crop_seconds)"
      )
    if len(depths) != len(heads):
      raise ConfigError(f"HTS-AT depths {list(depths)} and heads {list(heads)} must have one entry per stage")
    eps = 1e-5
    self.n_mels, self.frames, self.patch_size, self.remat = n_mels, frames, patch_size, remat
    self.spec_size = spec_size
    self.input_norm = BatchNorm(n_mels, dtype=jnp.float32, rngs=rngs)
    patch = nnx.initializers.lecun_normal()(rngs.params(), (patch_size, patch_size, 1, embed_dim))
    self.patch_kernel, self.patch_bias = nnx.Param(patch), nnx.Param(jnp.zeros((embed_dim,)))
    self.patch_norm = _layer_norm(embed_dim, eps, rngs)
    self.fusion = fusion
    if fusion:  # Three local views, patched three times wider and laid side by side, fused into the global one.
      local = nnx.initializers.lecun_normal()(rngs.params(), (patch_size, 3 * patch_size, 1, embed_dim))
      self.local_kernel, self.local_bias = nnx.Param(local), nnx.Param(jnp.zeros((embed_dim,)))
      self.feature_fusion = FeatureFusion(embed_dim, 4, dtype=dtype, rngs=rngs)
    blocks, merges = [], []
    size = spec_size // patch_size
    for index, (depth, stage_heads) in enumerate(zip(depths, heads)):
      dim = embed_dim * 2**index
      stage = []
      for i in range(depth):  # Every second block attends in shifted windows.
        shift = (i % 2) * (window_size // 2)
        stage.append(SwinBlock(dim, stage_heads, size, window_size, shift, mlp_ratio, eps, dtype=dtype, rngs=rngs))
      blocks.append(nnx.List(stage))
      if index < len(depths) - 1:
        merges.append(PatchMerging(dim, eps, dtype=dtype, rngs=rngs))
        size //= 2
    self.stages, self.merges = nnx.List(blocks), nnx.List(merges)
    self.output_dim = embed_dim * 2 ** (len(depths) - 1)
    self.norm = _layer_norm(self.output_dim, eps, rngs)
    self.dtype = dtype

  def image(self, mel: jax.Array, train: bool) -> jax.Array:
    """The normalised, stretched and folded mel `[..., n_mels, frames]` -> `[..., spec_size,
    spec_size]` (frequency, time)."""
    x = self.input_norm(jnp.swapaxes(mel, -1, -2), use_running_average=not train)  # [..., frames, n_mels]
    x = jnp.einsum("st,...tf->...sf", bicubic_matrix(self.frames, self.spec_size * self.freq_ratio), x)
    *lead, t, f = x.shape
    slices = jnp.swapaxes(x.reshape(*lead, self.freq_ratio, t // self.freq_ratio, f), -1, -2)  # [..., slice, f, t']
    return slices.reshape(*lead, self.freq_ratio * f, t // self.freq_ratio)

  def patches(self, image: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """A convolution whose stride is its kernel `[kh, kw, 1, c]` (columns that do not fill one
    are dropped), as a reshape and a matrix product: `[b, h, w]` -> `[b, h / kh, w / kw, c]`."""
    kh, kw = kernel.shape[:2]
    b, h, w = image.shape
    x = image[:, :, : w // kw * kw].reshape(b, h // kh, kh, w // kw, kw).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, h // kh, w // kw, kh * kw) @ kernel.reshape(kh * kw, -1).astype(self.dtype) + bias.astype(
      self.dtype
    )

  def __call__(self, mel: jax.Array, train: bool = False) -> jax.Array:
    expected = (4, self.n_mels, self.frames) if self.fusion else (self.n_mels, self.frames)
    if mel.shape[1:] != expected:
      raise ConfigError(
        f"audio tower built for mels of shape {list(expected)} (config.data.mel.n_mels, config.data.crop_seconds"
        f"{', four views' if self.fusion else ''}) but got {list(mel.shape[1:])}; make the config match the data"
      )
    image = self.image(mel.astype(jnp.float32), train).astype(self.dtype)
    if not self.fusion:
      x = self.patches(image, self.patch_kernel[...], self.patch_bias[...])
    else:
      x = self.patches(image[:, 0], self.patch_kernel[...], self.patch_bias[...])
      b, _, h, w = image.shape
      local = self.patches(image[:, 1:].reshape(b * 3, h, w), self.local_kernel[...], self.local_bias[...])
      local = local.reshape(b, 3, *local.shape[1:]).transpose(0, 2, 1, 3, 4)  # [b, h', view, w', c]
      local = local.reshape(b, local.shape[1], -1, local.shape[-1])  # The views side by side.
      local = jnp.pad(local, ((0, 0), (0, 0), (0, x.shape[2] - local.shape[2]), (0, 0)))
      longer = (mel[:, 1:] != mel[:, :1]).any(axis=(1, 2, 3))  # Views that differ: something to fuse.
      x = jnp.where(longer[:, None, None, None], self.feature_fusion(x, local, train), x)
    x = self.patch_norm(x).astype(self.dtype)
    for stage, blocks in enumerate(self.stages):
      for block in blocks:
        x = maybe_remat(lambda blk, y: blk(y), self.remat)(block, x)
      if stage < len(self.merges):
        x = self.merges[stage](x)
    return self.norm(x).mean(axis=(1, 2))
