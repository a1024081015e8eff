"""The original MusCALL in NumPy, for the tests of its import and of the PyTorch re-creation: a
random state_dict under the original's names and shapes, a small CLIP tokenizer, and the
original's forward pass (torchaudio mel, modified ResNet with attention or average pool, causal text
Transformer) written out from its code."""

import json

import numpy as np
from tokenizers.pre_tokenizers import ByteLevel

WIDTH, LAYERS, AUDIO_DIM, HEADS = 16, (3, 4, 6, 3), 256, 8
TEXT_WIDTH, TEXT_LAYERS, MAX_LEN, PROJECTION = 512, 4, 77, 512
N_MELS, SR, N_FFT, FMAX, CROP_SECONDS = 128, 16000, 1024, 11025.0, 20.0


def pool_tokens(seconds=CROP_SECONDS, sr=SR, n_fft=N_FFT):
  """The attention pool's positions, as the original sizes them."""
  return (N_MELS // 32) * ((int(seconds * sr) // (n_fft // 2) + 1) // 32) + 1


def clip_tokenizer_files(directory):
  """A small CLIP-format BPE vocabulary (byte alphabet, `</w>` word ends, a few merges)."""
  chars = sorted(ByteLevel.alphabet())
  merges = [("p", "i"), ("pi", "a"), ("n", "o</w>"), ("pia", "no</w>"), ("c", "a"), ("l", "m</w>")]
  vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
  directory.mkdir()
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
  (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return len(vocab)


def muscall_ids(tokenizer, texts, max_len=MAX_LEN):
  """Token ids `[len(texts), max_len]` as MusCALL gives them (a Hugging Face CLIP `tokenizer`, cut
  to its `max_seq_length`, zero-padded after the end of text) and their mask (True on real tokens)."""
  ids, mask = np.zeros((len(texts), max_len), np.int64), np.zeros((len(texts), max_len), bool)
  for row, text in enumerate(texts):
    encoded = tokenizer(text, max_length=max_len, truncation=True)["input_ids"]
    ids[row, : len(encoded)], mask[row, : len(encoded)] = encoded, True
  return ids, mask


def linspace(start, end, steps, dtype):
  """torch.linspace: the step in `dtype`, the first half counted up from start and the second half
  down from end, in `dtype` arithmetic (numpy's linspace computes in float64 and rounds once)."""
  start, end = dtype(start), dtype(end)
  step = (end - start) / dtype(steps - 1)
  i = np.arange(steps)
  up, down = start + i.astype(dtype) * step, end - (steps - 1 - i).astype(dtype) * step
  return np.where(i < steps // 2, up, down).astype(dtype)


def htk_filterbank(dtype=np.float64, fmax=FMAX, sr=SR, n_fft=N_FFT):
  """torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0, fmax, 128, sr, norm=None, mel_scale='htk'),
  by its formula, computed in `dtype` (torchaudio: float32, the buffer a MusCALL checkpoint saves)."""
  freqs = linspace(0, sr // 2, n_fft // 2 + 1, dtype)
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731  (torchaudio: Python floats)
  points = dtype(700.0) * (dtype(10.0) ** (linspace(mel(0.0), mel(fmax), N_MELS + 2, dtype) / dtype(2595.0)) - 1)
  diff = np.diff(points)
  slopes = points[None, :] - freqs[:, None]
  down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
  return np.maximum(dtype(0.0), np.minimum(down, up))  # [freqs, mels]


def muscall_state_dict(vocab, rng, pooling="attention", seconds=CROP_SECONDS, sr=SR, n_fft=N_FFT, fmax=FMAX):
  """The state_dict of a MusCALL whose config.yaml has these `pooling`, `audio_len_seconds` and mel settings."""
  state = {}
  normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731

  def conv(name, cout, cin, k):
    state[f"{name}.weight"] = normal(cout, cin, k, k, scale=np.sqrt(2.0 / (cin * k * k)))

  def bn(name, c):
    state.update({
      f"{name}.weight": 1.0 + normal(c, scale=0.1), f"{name}.bias": normal(c, scale=0.1),
      f"{name}.running_mean": normal(c, scale=0.1), f"{name}.running_var": rng.uniform(0.5, 1.5, c).astype(np.float32),
      f"{name}.num_batches_tracked": np.asarray(1000, np.int64),
    })  # fmt: skip

  def linear(name, out, inp, bias=True):
    state[f"{name}.weight"] = normal(out, inp, scale=1 / np.sqrt(inp))
    if bias:
      state[f"{name}.bias"] = normal(out, scale=0.02)

  a = "audio_backbone"
  state[f"{a}.spec.spectrogram.window"] = np.hanning(n_fft + 1)[:-1].astype(np.float32)
  state[f"{a}.spec.mel_scale.fb"] = htk_filterbank(np.float32, fmax, sr, n_fft)
  for i, (cin, cout) in enumerate([(1, WIDTH // 2), (WIDTH // 2, WIDTH // 2), (WIDTH // 2, WIDTH)]):
    conv(f"{a}.conv{i + 1}", cout, cin, 3)
    bn(f"{a}.bn{i + 1}", cout)
  inplanes = WIDTH
  for stage, depth in enumerate(LAYERS):
    planes = WIDTH * 2**stage
    for i in range(depth):
      p = f"{a}.layer{stage + 1}.{i}"
      conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
      conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
      conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
      if i == 0:
        conv(f"{p}.downsample.0", planes * 4, inplanes, 1), bn(f"{p}.downsample.1", planes * 4)
      inplanes = planes * 4
  if pooling == "average":
    linear(f"{a}.final_linear", AUDIO_DIM, inplanes)  # Hard-coded nn.Linear(512, 256) there.
  else:
    tokens = pool_tokens(seconds, sr, n_fft)
    state[f"{a}.attnpool.positional_embedding"] = normal(tokens, inplanes, scale=inplanes**-0.5)
    for name in ("q_proj", "k_proj", "v_proj"):
      linear(f"{a}.attnpool.{name}", inplanes, inplanes)
    linear(f"{a}.attnpool.c_proj", AUDIO_DIM, inplanes)
  t = "textual_head"
  state[f"{t}.token_embedding.weight"] = normal(vocab, TEXT_WIDTH, scale=0.02)
  state[f"{t}.position_embedding.weight"] = normal(MAX_LEN, TEXT_WIDTH, scale=0.01)
  for i in range(TEXT_LAYERS):
    p = f"{t}.transformer.layers.{i}"
    for norm in (f"{p}.0.norm", f"{p}.1.norm"):
      state[f"{norm}.weight"], state[f"{norm}.bias"] = (
        1.0 + normal(TEXT_WIDTH, scale=0.1),
        normal(TEXT_WIDTH, scale=0.1),
      )
    linear(f"{p}.0.fn.to_qkv", 3 * TEXT_WIDTH, TEXT_WIDTH, bias=False)
    linear(f"{p}.0.fn.out_projection", TEXT_WIDTH, TEXT_WIDTH)
    linear(f"{p}.1.fn.mlp.0", 4 * TEXT_WIDTH, TEXT_WIDTH)
    linear(f"{p}.1.fn.mlp.3", TEXT_WIDTH, 4 * TEXT_WIDTH)
  for norm in (f"{t}.transformer.norm_out", f"{t}.ln_final"):
    state[f"{norm}.weight"], state[f"{norm}.bias"] = 1.0 + normal(TEXT_WIDTH, scale=0.1), normal(TEXT_WIDTH, scale=0.1)
  linear("audio_projection", PROJECTION, AUDIO_DIM, bias=False)
  linear("text_projection", PROJECTION, TEXT_WIDTH, bias=False)
  state["logit_scale"] = np.asarray(np.log(1 / 0.07), np.float32)
  linear("audio_ssl.projector.0", 128, AUDIO_DIM)  # MusCALL_SSL's training-only head: not imported.
  return state


# ---------------------------------------------------------------- The original forward pass, in numpy.


def torchaudio_log_mel(wave, sr=SR, n_fft=N_FFT, fmax=FMAX):
  """MelSpectrogram(sr, n_fft=n_fft, f_min=0, f_max=fmax, n_mels=128, power=2, normalized=True),
  then AmplitudeToDB(top_db=100), for one clip."""
  hop = n_fft // 2
  padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # Periodic Hann.
  frames = np.stack([padded[i : i + n_fft] for i in range(0, len(padded) - n_fft + 1, hop)])
  power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 / np.sum(window**2)
  db = 10 * np.log10(np.maximum(power @ htk_filterbank(np.float64, fmax, sr, n_fft), 1e-10)).T
  return np.maximum(db, db.max() - 100.0)


def conv2d(x, w, stride=1):
  """NCHW convolution, padding k // 2 (torch's Conv2d(padding=1) for 3x3, none for 1x1)."""
  k = w.shape[-1]
  x = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
  h, wd = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for i in range(k):
    for j in range(k):
      patch = x[:, :, i : i + stride * h : stride, j : j + stride * wd : stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def batch_norm(x, s, name):
  scale = s[f"{name}.weight"] / np.sqrt(s[f"{name}.running_var"] + 1e-5)
  return (x - s[f"{name}.running_mean"][:, None, None]) * scale[:, None, None] + s[f"{name}.bias"][:, None, None]


def avg_pool(x, k):
  n, c, h, w = x.shape
  return x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))


def relu(x):
  return np.maximum(x, 0)


def softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v, heads, mask=None):
  """Multi-head attention of [n, L, d] inputs already projected."""
  n, lq, d = q.shape
  split = lambda x: x.reshape(n, -1, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
  logits = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
  if mask is not None:
    logits = logits + mask
  return (softmax(logits) @ split(v)).transpose(0, 2, 1, 3).reshape(n, lq, d)


def muscall_audio(s, waves, **mel):
  """The audio embeddings of `waves`, with the mel settings (`torchaudio_log_mel`'s) `mel`."""
  return muscall_audio_from_mels(s, np.stack([torchaudio_log_mel(w, **mel) for w in waves]))


def muscall_audio_from_mels(s, mels):
  a = "audio_backbone"
  x = mels[:, None]
  for i in range(3):
    x = relu(batch_norm(conv2d(x, s[f"{a}.conv{i + 1}.weight"], 2 if i == 0 else 1), s, f"{a}.bn{i + 1}"))
  x = avg_pool(x, 2)
  for stage, depth in enumerate(LAYERS):
    for i in range(depth):
      p, stride = f"{a}.layer{stage + 1}.{i}", 2 if (stage > 0 and i == 0) else 1
      out = relu(batch_norm(conv2d(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1"))
      out = relu(batch_norm(conv2d(out, s[f"{p}.conv2.weight"]), s, f"{p}.bn2"))
      out = batch_norm(conv2d(avg_pool(out, stride), s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
      identity = x
      if f"{p}.downsample.0.weight" in s:
        identity = batch_norm(conv2d(avg_pool(x, stride), s[f"{p}.downsample.0.weight"]), s, f"{p}.downsample.1")
      x = relu(out + identity)
  if f"{a}.final_linear.weight" in s:  # pooling: average (AdaptiveAvgPool2d((1, 1)), final_linear).
    features = x.mean(axis=(2, 3)) @ s[f"{a}.final_linear.weight"].T + s[f"{a}.final_linear.bias"]
    return features @ s["audio_projection.weight"].T
  tokens = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)  # [n, HW, C], HW row-major.
  tokens = np.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
  tokens = tokens + s[f"{a}.attnpool.positional_embedding"]
  lin = lambda x, name: x @ s[f"{a}.attnpool.{name}.weight"].T + s[f"{a}.attnpool.{name}.bias"]  # noqa: E731
  pooled = attention(lin(tokens, "q_proj"), lin(tokens, "k_proj"), lin(tokens, "v_proj"), HEADS)
  features = lin(pooled, "c_proj")[:, 0]
  return features @ s["audio_projection.weight"].T


def layer_norm(x, s, name):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * s[f"{name}.weight"] + s[f"{name}.bias"]


def gelu(x):
  from scipy.special import erf

  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def muscall_text(s, ids, heads=HEADS):
  """TextTransformer (`heads`: its num_attention_heads) on MusCALL's zero-padded ids, pooled at
  argmax(ids) (the end-of-text token)."""
  t = "textual_head"
  n = ids.shape[1]
  x = s[f"{t}.token_embedding.weight"][ids] + s[f"{t}.position_embedding.weight"][:n]
  mask = np.triu(np.full((n, n), -np.inf), 1)
  for i in range(TEXT_LAYERS):
    p = f"{t}.transformer.layers.{i}"
    h = layer_norm(x, s, f"{p}.0.norm")
    q, k, v = np.split(h @ s[f"{p}.0.fn.to_qkv.weight"].T, 3, axis=-1)
    attended = attention(q, k, v, heads, mask)
    x = x + attended @ s[f"{p}.0.fn.out_projection.weight"].T + s[f"{p}.0.fn.out_projection.bias"]
    h = layer_norm(x, s, f"{p}.1.norm")
    h = gelu(h @ s[f"{p}.1.fn.mlp.0.weight"].T + s[f"{p}.1.fn.mlp.0.bias"])
    x = x + h @ s[f"{p}.1.fn.mlp.3.weight"].T + s[f"{p}.1.fn.mlp.3.bias"]
  x = layer_norm(x, s, f"{t}.transformer.norm_out")
  pooled = x[np.arange(len(ids)), ids.argmax(axis=-1)]
  return pooled @ s["text_projection.weight"].T


def normalized(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)
