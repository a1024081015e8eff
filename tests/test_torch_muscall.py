"""The PyTorch MusCALL of the speed comparisons (benchmarks/torch_muscall.py) computes the original's
forward pass: its state_dict, loaded from a MusCALL checkpoint's names, gives the embeddings of the
NumPy re-computation that the import of real checkpoints is tested against. Needs torch (optional)."""

import numpy as np
import pytest
from conftest import ROOT
from muscall_reference import (
  AUDIO_DIM,
  CROP_SECONDS,
  LAYERS,
  MAX_LEN,
  N_MELS,
  PROJECTION,
  TEXT_LAYERS,
  TEXT_WIDTH,
  WIDTH,
  muscall_audio_from_mels,
  muscall_state_dict,
  muscall_text,
)

from mclap import cli

torch = pytest.importorskip("torch")
torch_muscall = pytest.importorskip("benchmarks.torch_muscall")

VOCAB = 300


def test_torch_muscall_computes_the_original_forward_pass():
  c = cli.load_config(str(ROOT / "configs/muscall.py"))
  assert (c.model.audio.width, tuple(c.model.audio.layers), c.model.audio.output_dim) == (WIDTH, LAYERS, AUDIO_DIM)
  assert (c.model.text.width, c.model.text.layers, c.data.max_tokens, c.model.projection_dim) == (
    TEXT_WIDTH, TEXT_LAYERS, MAX_LEN, PROJECTION,
  )  # fmt: skip
  assert (c.data.mel.n_mels, c.data.crop_seconds) == (N_MELS, CROP_SECONDS)
  state = muscall_state_dict(VOCAB, np.random.default_rng(0))
  model = torch_muscall.MusCALL(c, vocab=VOCAB).double().eval()
  tensors = {k: torch.from_numpy(v.astype(np.int64 if v.dtype == np.int64 else np.float64)) for k, v in state.items()}
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  assert missing == []  # Every parameter and buffer comes from the checkpoint.
  assert sorted(unexpected) == sorted(k for k in state if ".spec." in k or k.startswith("audio_ssl."))

  rng = np.random.default_rng(1)
  frames = 1 + int(CROP_SECONDS * 16000) // 512
  mels = rng.normal(-30, 15, size=(2, N_MELS, frames))
  ids = np.zeros((3, MAX_LEN), np.int64)
  for row, length in enumerate((5, 12, 2)):
    ids[row, :length] = rng.integers(1, VOCAB - 1, length)
    ids[row, length] = VOCAB - 1  # The end-of-text token has the largest id.
  s = {k: v.astype(np.float64) for k, v in state.items()}
  with torch.no_grad():
    audio = model.audio_projection(model.audio_backbone(torch.from_numpy(mels))).numpy()
    text = model.text_projection(model.textual_head(torch.from_numpy(ids))).numpy()
  np.testing.assert_allclose(audio, muscall_audio_from_mels(s, mels), rtol=1e-7, atol=1e-7 * np.abs(audio).max())
  np.testing.assert_allclose(text, muscall_text(s, ids), rtol=1e-7, atol=1e-7 * np.abs(text).max())


def test_torch_muscall_train_step_lowers_the_loss():
  c = cli.load_config(str(ROOT / "configs/muscall.py:demo"))
  torch.manual_seed(0)
  model = torch_muscall.MusCALL(c, vocab=VOCAB)
  step = torch_muscall.make_train_step(model, c, amp_dtype=None)
  frames = 1 + int(c.data.crop_seconds * c.data.mel.sample_rate) // c.data.mel.hop_length
  mels = torch.randn(4, c.data.mel.n_mels, frames)
  ids = torch.randint(1, VOCAB, (4, c.data.max_tokens))
  losses = [float(step(mels, ids)) for _ in range(5)]
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
