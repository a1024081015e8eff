"""Log-mel front end shared by every data source.

Mels are computed once, offline, by `mclap.data.prepare`; the settings travel with the corpus in
`dataset_info.json` so training, evaluation and inference always agree on them.
"""

from __future__ import annotations

import functools
import warnings
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
      pad_mode="constant",  # How the centred STFT pads the signal's ends: "constant" (zeros) or "reflect".
      window_norm=False,  # Divide the power by the window's energy (torchaudio's `normalized=True`).
    )
  )


def muscall_torchaudio_config() -> ml_collections.ConfigDict:
  """The front end the original MusCALL computes inside its model, for imported checkpoints:
  torchaudio's `MelSpectrogram(sample_rate=16000, n_fft=1024, f_min=0, f_max=11025, n_mels=128,
  power=2, normalized=True)` (HTK mel scale, unnormalised filters, reflect-padded Hann STFT
  divided by the window's energy) then `AmplitudeToDB(top_db=100)`.

  Filters above the 8 kHz Nyquist frequency are empty there as here. One difference: MusCALL
  applies `AmplitudeToDB` to the 3-D `[batch, n_mels, frames]` spectrogram, for which torchaudio
  computes one `top_db` cut-off below the loudest value of the whole batch (per clip only from
  4-D inputs); mclap cuts below each clip's own peak, as the original does for batches of one.
  """
  config = default_mel_config()
  config.update(fmax=11025.0, htk=True, norm="", top_db=100.0, pad_mode="reflect", window_norm=True)
  return config


PRESETS = {"mclap": default_mel_config, "muscall_torchaudio": muscall_torchaudio_config}


def complete(mel_config: Mapping[str, Any]) -> dict[str, Any]:
  """Mel settings with the keys added since a corpus or bundle was written, at the values that
  reproduce what it was written with (the defaults)."""
  return {**default_mel_config().to_dict(), **mel_config}


def floor_db(mel_config: Mapping[str, Any]) -> float:
  """The log-mel value of silence, used to pad clips shorter than a crop."""
  return float(10.0 * np.log10(mel_config["amin"]))


def num_frames(seconds: float, mel_config: Mapping[str, Any]) -> int:
  """Frames in the mel of a clip `seconds` long (centred STFT), e.g. 626 for 20 s at hop 512."""
  return 1 + int(round(seconds * mel_config["sample_rate"])) // mel_config["hop_length"]


@functools.lru_cache(maxsize=8)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str):
  with warnings.catch_warnings():
    if fmax > sr / 2:  # Filters above Nyquist are empty by the settings' design (MusCALL's fmax 11025).
      warnings.filterwarnings("ignore", "Empty filters detected", UserWarning)
    return librosa.filters.mel(
      sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm or None
    ).astype(np.float32)


def filterbank(mel_config: Mapping[str, Any]) -> np.ndarray:
  """The mel filters `[n_mels, 1 + n_fft // 2]` of the settings (float32)."""
  c = complete(mel_config)
  return _filterbank(c["sample_rate"], c["n_fft"], c["n_mels"], float(c["fmin"]), float(c["fmax"]), c["htk"], c["norm"])


def log_mel(wave: np.ndarray, mel_config: Mapping[str, Any]) -> np.ndarray:
  """Log-mel power spectrogram in dB, float32 `[n_mels, frames]`, of a mono wave at the config's rate.

  The dB scale is absolute (reference power 1.0), so loudness survives into the features.
  """
  c = complete(mel_config)
  if c["pad_mode"] not in ("constant", "reflect"):
    raise ValueError(f"mel pad_mode={c['pad_mode']!r}; use constant or reflect")
  wave = np.asarray(wave, np.float32)
  if c["pad_mode"] == "reflect" and len(wave) <= c["n_fft"] // 2:  # Reflection needs more samples than it pads.
    wave = np.pad(wave, (0, c["n_fft"] // 2 + 1 - len(wave)))
  spec = librosa.stft(wave, n_fft=c["n_fft"], hop_length=c["hop_length"], center=True, pad_mode=c["pad_mode"])
  power = np.abs(spec) ** 2
  if c["window_norm"]:
    power /= np.sum(librosa.filters.get_window("hann", c["n_fft"], fftbins=True) ** 2)
  mel = filterbank(c) @ power
  db = 10.0 * np.log10(np.maximum(mel, c["amin"]))
  if c["top_db"]:
    db = np.maximum(db, db.max() - c["top_db"])
  return db.astype(np.float32)
