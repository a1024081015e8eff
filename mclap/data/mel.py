"""Log-mel front end shared by every data source.

Mels are computed once, offline, by `mclap.data.prepare`; the settings travel with the corpus in
`dataset_info.json` so training, evaluation and inference always agree on them. The STFT and the
mel filters are NumPy here (librosa's definitions, checked against librosa in the tests): the
front end then needs no numba/LLVM, which accelerator images often lack and which weigh 60 MB.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

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


def clap_config() -> ml_collections.ConfigDict:
  """The front end of LAION-CLAP's released models (its `audio_cfg` and Hugging Face's
  `ClapFeatureExtractor` for unfused models): 48 kHz, n_fft 1024, hop 480 (10 ms), 64 Slaney-
  normalised Slaney-scale mels from 50 Hz to 14 kHz, a reflect-padded periodic-Hann STFT, power in
  dB with a 1e-10 floor and no dynamic-range cut."""
  config = default_mel_config()
  config.update(sample_rate=48000, hop_length=480, n_mels=64, fmin=50.0, fmax=14000.0, top_db=0.0, pad_mode="reflect")
  return config


def clap_fused_config() -> ml_collections.ConfigDict:
  """The front end of LAION-CLAP's fused models: `clap_config` with torchaudio's filters (HTK mel
  scale, unnormalised), which their training and Hugging Face's fused feature extraction use."""
  config = clap_config()
  config.update(htk=True, norm="")
  return config


PRESETS = {
  "mclap": default_mel_config,
  "muscall_torchaudio": muscall_torchaudio_config,
  "clap": clap_config,
  "clap_fused": clap_fused_config,
}


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


# Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray, htk: bool) -> np.ndarray:
  hz = np.asarray(hz, np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  linear = hz / _SLANEY_HZ_PER_MEL
  above = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL + np.log(np.maximum(hz, 1e-300) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
  return np.where(hz >= _SLANEY_BREAK_HZ, above, linear)


def mel_to_hz(mels: np.ndarray, htk: bool) -> np.ndarray:
  mels = np.asarray(mels, np.float64)
  if htk:
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
  break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
  above = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mels - break_mel))
  return np.where(mels >= break_mel, above, _SLANEY_HZ_PER_MEL * mels)


def mel_frequencies(n: int, fmin: float, fmax: float, htk: bool) -> np.ndarray:
  """`n` frequencies in Hz evenly spaced on the mel scale from `fmin` to `fmax`: the filters' edges."""
  return mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n), htk)


@functools.lru_cache(maxsize=8)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str) -> np.ndarray:
  """Triangles between consecutive mel edges over the FFT bins; "slaney" norm divides each by its
  width in Hz / 2 (constant energy per filter). Filters above Nyquist stay empty (MusCALL's fmax
  11025 Hz at 16 kHz)."""
  edges = mel_frequencies(n_mels + 2, fmin, fmax, htk)
  bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
  rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
  falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm == "slaney":
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  elif norm:
    raise ValueError(f"mel norm={norm!r}; use slaney or an empty string")
  return weights.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
  """The periodic Hann window (what spectral analysis uses; librosa's and torch's default)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def power_spectrogram(wave: np.ndarray, n_fft: int, hop_length: int, pad_mode: str) -> np.ndarray:
  """|STFT|² `[1 + n_fft // 2, frames]` of a centred, Hann-windowed STFT (frame t centred on
  sample t * hop_length, the ends padded by n_fft // 2 with zeros or reflection)."""
  padded = np.pad(wave, n_fft // 2, mode=pad_mode)
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
  spec = np.fft.rfft(frames * _hann(n_fft), axis=-1)
  return (spec.real**2 + spec.imag**2).T


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
  power = power_spectrogram(wave, c["n_fft"], c["hop_length"], c["pad_mode"])
  if c["window_norm"]:
    power /= np.sum(_hann(c["n_fft"]) ** 2)
  mel = filterbank(c) @ power
  db = 10.0 * np.log10(np.maximum(mel, c["amin"]))
  if c["top_db"]:
    db = np.maximum(db, db.max() - c["top_db"])
  return db.astype(np.float32)
