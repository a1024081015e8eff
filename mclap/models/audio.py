"""Audio towers over log-mels `[batch, n_mels, frames]`.

`ModifiedResNet` is CLIP's ResNet as MusCALL uses it: three stem convolutions, average pooling
instead of max pooling, anti-aliased strides (average pooling before strided convolutions),
bottleneck stages (3, 4, 6, 3) of width `w, 2w, 4w, 8w` (x4 expansion: 32w output channels),
and attention pooling (mean token prepended, learned positional embedding, its output taken) or
MusCALL's other option, `average`: the mean over frequency and time through a linear layer.
Convolutions use PyTorch's explicit padding so imported weights see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mclap.errors import ConfigError
from mclap.models.layers import Attention, BatchNorm, Conv2d, avg_pool, maybe_remat


class _ConvBN(nnx.Module):
  """Convolution without bias, then batch norm (PyTorch momentum 0.1 = Flax 0.9)."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, dtype: Any, rngs: nnx.Rngs):
    self.conv = Conv2d(cin, cout, kernel, stride, dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.bn(self.conv(x), use_running_average=not train)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int, *, dtype: Any, rngs: nnx.Rngs):
    self.stride = stride
    self.conv1 = _ConvBN(inplanes, planes, 1, dtype=dtype, rngs=rngs)
    self.conv2 = _ConvBN(planes, planes, 3, dtype=dtype, rngs=rngs)
    self.conv3 = _ConvBN(planes, planes * self.expansion, 1, dtype=dtype, rngs=rngs)
    needs_projection = stride > 1 or inplanes != planes * self.expansion
    self.downsample = (
      _ConvBN(inplanes, planes * self.expansion, 1, dtype=dtype, rngs=rngs) if needs_projection else None
    )

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jax.nn.relu(self.conv1(x, train))
    out = jax.nn.relu(self.conv2(out, train))
    out = self.conv3(avg_pool(out, self.stride), train)
    identity = self.downsample(avg_pool(x, self.stride), train) if self.downsample is not None else x
    return jax.nn.relu(out + identity)


def resnet_output_grid(n_mels: int, frames: int) -> tuple[int, int]:
  """Spatial size after the stem (stride-2 conv, 2x pool) and three strided stages."""
  h, w = -(-n_mels // 2) // 2, -(-frames // 2) // 2
  for _ in range(3):
    h, w = h // 2, w // 2
  return h, w


class AttentionPool(nnx.Module):
  """One query (the mean token) attends over all positions; returns `[batch, output_dim]`."""

  def __init__(self, tokens: int, width: int, heads: int, output_dim: int, *, dtype: Any, rngs: nnx.Rngs):
    self.positional_embedding = nnx.Param(jax.random.normal(rngs.params(), (tokens + 1, width)) / width**0.5)
    self.attention = Attention(width, heads, output_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    x = x + self.positional_embedding[...].astype(x.dtype)
    return self.attention(x[:, :1], x)[:, 0]


class ModifiedResNet(nnx.Module):
  def __init__(
    self,
    *,
    n_mels: int,
    frames: int,
    width: int,
    layers: Sequence[int],
    pooling: str,
    heads: int,
    output_dim: int,
    remat: str,
    dtype: Any,
    rngs: nnx.Rngs,
  ):
    self.n_mels, self.frames, self.pooling, self.remat, self.output_dim = n_mels, frames, pooling, remat, output_dim
    self.stem = nnx.List(
      [
        _ConvBN(1, width // 2, 3, stride=2, dtype=dtype, rngs=rngs),
        _ConvBN(width // 2, width // 2, 3, dtype=dtype, rngs=rngs),
        _ConvBN(width // 2, width, 3, dtype=dtype, rngs=rngs),
      ]
    )
    blocks, inplanes = [], width
    for stage, depth in enumerate(layers):
      planes = width * 2**stage
      for i in range(depth):
        blocks.append(Bottleneck(inplanes, planes, 2 if (stage > 0 and i == 0) else 1, dtype=dtype, rngs=rngs))
        inplanes = planes * Bottleneck.expansion
    self.blocks = nnx.List(blocks)
    grid = resnet_output_grid(n_mels, frames)
    if min(grid) < 1:
      raise ConfigError(f"a {n_mels}x{frames} mel is too small for the ResNet's 32x downsampling; use longer crops")
    if pooling == "attention":
      self.pool = AttentionPool(grid[0] * grid[1], inplanes, heads, output_dim, dtype=dtype, rngs=rngs)
    elif pooling == "average":  # MusCALL's `final_avgpool` then `final_linear` (with bias).
      self.pool = nnx.Linear(inplanes, output_dim, dtype=dtype, rngs=rngs)
    else:
      raise ConfigError(f"config.model.audio.pooling={pooling!r}; use attention or average")

  def __call__(self, mel: jax.Array, train: bool = False) -> jax.Array:
    """mel `[batch, n_mels, frames]` -> features `[batch, output_dim]`."""
    if mel.shape[1:] != (self.n_mels, self.frames):
      raise ConfigError(
        f"audio tower built for mels of shape [{self.n_mels}, {self.frames}] (config.data.mel.n_mels, "
        f"config.data.crop_seconds) but got {list(mel.shape[1:])}; make the config match the data"
      )
    x = mel[..., None].astype(self.stem[0].conv.dtype or jnp.float32)
    for layer in self.stem:
      x = jax.nn.relu(layer(x, train))
    x = avg_pool(x, 2)
    for block in self.blocks:
      x = maybe_remat(lambda b, y: b(y, train), self.remat)(block, x)
    return self.pool(x if self.pooling == "attention" else x.mean(axis=(1, 2)))


class SimpleCNN(nnx.Module):
  """Sideras et al.'s audio encoder: conv blocks (3x3 conv, ReLU, 2x2 max pool) of 16/32/64/128
  channels, batch norm in the last `batch_norm_blocks` blocks, then the mean over frequency and
  time: features `[batch, channels[-1]]`."""

  def __init__(self, *, channels: Sequence[int], batch_norm_blocks: int, dtype: Any, rngs: nnx.Rngs):
    cins = (1, *channels[:-1])
    first_bn = len(channels) - batch_norm_blocks
    self.convs = nnx.List(
      [Conv2d(i, o, 3, use_bias=b < first_bn, dtype=dtype, rngs=rngs) for b, (i, o) in enumerate(zip(cins, channels))]
    )
    self.norms = nnx.List(
      [
        BatchNorm(o, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs) if b >= first_bn else None
        for b, o in enumerate(channels)
      ]
    )
    self.output_dim = channels[-1]

  def __call__(self, mel: jax.Array, train: bool = False) -> jax.Array:
    x = mel[..., None].astype(self.convs[0].dtype or jnp.float32)
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x)
      if norm is not None:
        x = norm(x, use_running_average=not train)
      x = jax.nn.relu(x)
      if min(x.shape[1:3]) >= 2:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return x.mean(axis=(1, 2)).astype(jnp.float32)
