"""MusCALL's model and train step in PyTorch, for side-by-side speed comparisons (torch is optional).

The modules and parameter names follow the original MusCALL (`audio_backbone` = CLIP's modified
ResNet over log-mels with an attention pool, `textual_head` = a causal pre-norm Transformer pooled
at the end-of-text token, linear projections without bias, learned logit scale), so its
`state_dict` is a MusCALL checkpoint: `tests/test_torch_muscall.py` checks this forward pass
against the NumPy re-computation of the original that the import of real checkpoints is tested
with. The step takes log-mels, as mclap's does (the original computes them in its forward pass:
that work is left out of both), and runs the original's objective (symmetric InfoNCE with a
learned temperature) and optimiser (AdamW, betas 0.9/0.98, eps 1e-6, weight decay 0.2).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
    self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
    self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride > 1 or inplanes != planes * 4:
      self.downsample = _Downsample(stride, inplanes, planes * 4)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(self.avgpool(out)))
    identity = x if self.downsample is None else self.downsample(x)
    return F.relu(out + identity)


class _Downsample(nn.Sequential):
  """Average pool, then `0` = 1x1 convolution and `1` = batch norm (the original's names)."""

  def __init__(self, stride: int, inplanes: int, outplanes: int):
    super().__init__(nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(F.avg_pool2d(x, self.stride) if self.stride > 1 else x)


class AttentionPool(nn.Module):
  def __init__(self, tokens: int, dim: int, heads: int, output_dim: int):
    super().__init__()
    self.positional_embedding = nn.Parameter(torch.randn(tokens, dim) / dim**0.5)
    self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.c_proj = nn.Linear(dim, output_dim)
    self.heads = heads

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(2).transpose(1, 2)  # [n, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding
    n, _, dim = x.shape
    split = lambda t: t.view(n, -1, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
    # Only the mean token queries (the original attends from all and keeps the first).
    out = F.scaled_dot_product_attention(split(self.q_proj(x[:, :1])), split(self.k_proj(x)), split(self.v_proj(x)))
    return self.c_proj(out.transpose(1, 2).reshape(n, 1, dim))[:, 0]


class ModifiedResNet(nn.Module):
  def __init__(self, layers, width: int, heads: int, output_dim: int, pool_tokens: int):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(1, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2)
    self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2)
    self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
    inplanes, stages = width, []
    for i, depth in enumerate(layers):
      planes = width * 2**i
      blocks = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
      blocks += [Bottleneck(planes * 4, planes, 1) for _ in range(depth - 1)]
      stages.append(nn.Sequential(*blocks))
      inplanes = planes * 4
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.attnpool = AttentionPool(pool_tokens, inplanes, heads, output_dim)

  def forward(self, mels: torch.Tensor) -> torch.Tensor:
    x = mels[:, None]
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
      x = F.relu(bn(conv(x)))
    x = F.avg_pool2d(x, 2)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.attnpool(x)


class PreNorm(nn.Module):
  def __init__(self, dim: int, fn: nn.Module):
    super().__init__()
    self.norm, self.fn = nn.LayerNorm(dim), fn

  def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return self.fn(self.norm(x), **kwargs)


class SelfAttention(nn.Module):
  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.to_qkv, self.out_projection = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
    self.heads = heads

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, length, dim = x.shape
    q, k, v = (t.view(n, length, self.heads, dim // self.heads).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.out_projection(out.transpose(1, 2).reshape(n, length, dim))


class FeedForward(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.mlp(x)


class Transformer(nn.Module):
  def __init__(self, dim: int, depth: int, heads: int):
    super().__init__()
    self.layers = nn.ModuleList(
      nn.ModuleList([PreNorm(dim, SelfAttention(dim, heads)), PreNorm(dim, FeedForward(dim))]) for _ in range(depth)
    )
    self.norm_out = nn.LayerNorm(dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for attention, feed_forward in self.layers:
      x = x + attention(x)
      x = x + feed_forward(x)
    return self.norm_out(x)


class TextTransformer(nn.Module):
  def __init__(self, vocab: int, max_len: int, width: int, layers: int, heads: int):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab, width)
    self.position_embedding = nn.Embedding(max_len, width)
    self.transformer = Transformer(width, layers, heads)
    self.ln_final = nn.LayerNorm(width)  # In the original's state_dict, unused by its forward pass.

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1], device=ids.device)
    x = self.transformer(self.token_embedding(ids) + self.position_embedding(positions))
    return x[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]  # The end-of-text token.


class MusCALL(nn.Module):
  def __init__(self, c, vocab: int = 49408):
    """`c`: an mclap config (model, data sections) giving the sizes."""
    super().__init__()
    a, t = c.model.audio, c.model.text
    frames = 1 + int(round(c.data.crop_seconds * c.data.mel.sample_rate)) // c.data.mel.hop_length
    pool_tokens = (c.data.mel.n_mels // 32) * (frames // 32) + 1
    self.audio_backbone = ModifiedResNet(a.layers, a.width, a.heads, a.output_dim, pool_tokens)
    self.textual_head = TextTransformer(vocab, c.data.max_tokens, t.width, t.layers, t.heads)
    self.audio_projection = nn.Linear(a.output_dim, c.model.projection_dim, bias=False)
    self.text_projection = nn.Linear(t.width, c.model.projection_dim, bias=False)
    self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

  def forward(self, mels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    audio = F.normalize(self.audio_projection(self.audio_backbone(mels)), dim=-1)
    text = F.normalize(self.text_projection(self.textual_head(ids)), dim=-1)
    return audio, text


def loss_fn(model: MusCALL, mels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
  audio, text = model(mels, ids)
  logits = model.logit_scale.exp() * audio @ text.T
  labels = torch.arange(len(ids), device=ids.device)
  return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def make_train_step(model: MusCALL, c, amp_dtype: torch.dtype | None):
  """A step (mels, ids) -> loss with the original's optimiser; `amp_dtype` autocasts (the original
  trains with fp16 AMP and a gradient scaler)."""
  opt = torch.optim.AdamW(model.parameters(), lr=c.optim.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
  scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
  device_type = next(model.parameters()).device.type

  def step(mels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
      loss = loss_fn(model, mels, ids)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()

  return step
