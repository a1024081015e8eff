"""Log-mel front end shared by every data source.

Mels are computed once, offline, by `mclap.data.prepare`; the settings travel with the corpus in
`dataset_info.json` so training, evaluation and inference always agree on them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import librosa
import ml_collections
import numpy as np


def default_mel_config() -> ml_collections.ConfigDict:
  """MusCALL's front end: 16 kHz, n_fft 1024, hop 512 (torchaudio's default), 128 mels.

  MusCALL's released config sets fmax 11025 Hz, above the 8 kHz Nyquist frequency of 16 kHz
  audio, which leaves its top mel filters empty; mclap's default stops at Nyquist.
  """
  return ml_collections.ConfigDict(
    dict(
      sample_rate=16000,
      n_fft=1024,
      hop_length=512,
      n_mels=128,
      fmin=0.0,
      fmax=8000.0,
      htk=False,  # Mel scale: Slaney (librosa's default) or HTK.
      norm="slaney",  # Filter normalisation: "slaney" or "" for none.
      top_db=80.0,  # Dynamic range kept below each clip's peak.
      amin=1e-10,  # Power floor before the log; also the value used to pad short clips.
    )
  )


def floor_db(mel_config: Mapping[str, Any]) -> float:
  """The log-mel value of silence, used to pad clips shorter than a crop."""
  return float(10.0 * np.log10(mel_config["amin"]))


def num_frames(seconds: float, mel_config: Mapping[str, Any]) -> int:
  """Frames in the mel of a clip `seconds` long (centred STFT), e.g. 626 for 20 s at hop 512."""
  return 1 + int(round(seconds * mel_config["sample_rate"])) // mel_config["hop_length"]


@functools.lru_cache(maxsize=8)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str):
  return librosa.filters.mel(
    sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm or None
  ).astype(np.float32)


def log_mel(wave: np.ndarray, mel_config: Mapping[str, Any]) -> np.ndarray:
  """Log-mel power spectrogram in dB, float32 `[n_mels, frames]`, of a mono wave at the config's rate.

  The dB scale is absolute (reference power 1.0), so loudness survives into the features.
  """
  c = dict(mel_config)
  spec = librosa.stft(
    np.asarray(wave, np.float32),
    n_fft=c["n_fft"],
    hop_length=c["hop_length"],
    center=True,
    pad_mode="constant",
  )
  power = np.abs(spec) ** 2
  fbank = _filterbank(
    c["sample_rate"], c["n_fft"], c["n_mels"], float(c["fmin"]), float(c["fmax"]), c["htk"], c["norm"]
  )
  mel = fbank @ power
  db = 10.0 * np.log10(np.maximum(mel, c["amin"]))
  if c["top_db"]:
    db = np.maximum(db, db.max() - c["top_db"])
  return db.astype(np.float32)
