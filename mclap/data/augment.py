"""Training-time augmentation of log-mel crops, run in the Grain workers on the prepared mels.

Mels are stored in dB of absolute power, so each augmentation is an exact operation in that
domain: a gain is an offset, noise and mixup add powers, a pitch shift moves mel bins, and
SpecAugment masks set bands or frames to silence (the corpus floor, the value that pads short
clips). Only the `valid` leading frames hold audio; padding is never touched.

Evaluation never augments: the pipeline runs `Augmenter` only when it has a random generator,
and evaluation transforms run without one.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mclap.errors import ConfigError

_DB_TO_LOG = np.float32(np.log(10.0) / 10.0)  # power = exp(dB * ln(10) / 10)


def power_to_db(power: np.ndarray, floor: float) -> np.ndarray:
  """dB of a power, never below the floor (float32: the mels are stored as float16 anyway)."""
  floor_power = np.float32(np.exp(floor * _DB_TO_LOG))
  return np.maximum(np.log(np.maximum(power, floor_power)) / _DB_TO_LOG, np.float32(floor)).astype(np.float32)


def db_to_power(db: np.ndarray) -> np.ndarray:
  return np.exp(np.asarray(db, np.float32) * _DB_TO_LOG)


def apply_gain(mel: np.ndarray, valid: int, gain_db: float, floor: float) -> np.ndarray:
  """Scales the audio by `gain_db` (a dB offset of the valid frames, never below the floor)."""
  out = mel.copy()
  out[:, :valid] = np.maximum(out[:, :valid] + gain_db, floor)
  return out


def add_noise(mel: np.ndarray, valid: int, snr_db: float, floor: float, rng: np.random.Generator) -> np.ndarray:
  """Adds noise power to the valid frames at `snr_db` below the clip's mean power.

  The noise is white in the mel domain: an i.i.d. exponential power per bin and frame (the
  periodogram of Gaussian noise), with mean `mean(signal power) / 10^(snr_db/10)`.
  """
  out = mel.copy()
  power = db_to_power(mel[:, :valid])
  level = power.mean() / 10.0 ** (snr_db / 10.0)
  noise = rng.standard_exponential(size=power.shape, dtype=np.float32)
  out[:, :valid] = power_to_db(power + np.float32(level) * noise, floor)
  return out


def shift_bins(mel: np.ndarray, bins: int, floor: float) -> np.ndarray:
  """Moves the spectrum `bins` mel bands up (positive) or down (negative): an approximate pitch
  shift. Bands shifted in from outside the range are silent."""
  out = np.full_like(mel, floor)
  n = mel.shape[0]
  if bins >= 0:
    out[bins:] = mel[: n - bins]
  else:
    out[: n + bins] = mel[-bins:]
  return out


def mask_frames(mel: np.ndarray, start: int, width: int, floor: float) -> np.ndarray:
  out = mel.copy()
  out[:, start : start + width] = floor
  return out


def mask_bands(mel: np.ndarray, start: int, width: int, floor: float) -> np.ndarray:
  out = mel.copy()
  out[start : start + width] = floor
  return out


def mix(a: np.ndarray, b: np.ndarray, weight: float, floor: float) -> np.ndarray:
  """`weight * a + (1 - weight) * b` in power: the mel of the mixed waveforms (up to phase)."""
  return power_to_db(weight * db_to_power(a) + (1.0 - weight) * db_to_power(b), floor)


@dataclasses.dataclass(frozen=True)
class Augmenter:
  """The augmentations of `config.data.augment`, with the corpus floor and frame rate bound in.

  Order: gain, noise, pitch shift, then SpecAugment time and frequency masks. Mixup needs a
  second record and lives in the pipeline (`pipeline.ToExample`), before these.
  """

  floor: float
  frames_per_second: float
  gain_prob: float = 0.0
  gain_db: float = 6.0  # Offset drawn uniformly from [-gain_db, gain_db].
  noise_prob: float = 0.0
  noise_snr_db: tuple[float, float] = (10.0, 30.0)  # SNR drawn uniformly from this range.
  pitch_prob: float = 0.0
  pitch_bins: int = 4  # Shift drawn uniformly from [-pitch_bins, pitch_bins] mel bands.
  time_masks: int = 0
  time_mask_seconds: float = 1.0  # Each mask's width drawn uniformly from [0, this].
  freq_masks: int = 0
  freq_mask_bins: int = 16  # Each mask's width drawn uniformly from [0, this] mel bands.
  mixup_prob: float = 0.0
  mixup_alpha: float = 0.4

  @classmethod
  def from_config(cls, augment: ml_collections.ConfigDict, floor: float, frames_per_second: float) -> Augmenter:
    settings = augment.to_dict()
    settings["noise_snr_db"] = tuple(settings["noise_snr_db"])
    return cls(floor=floor, frames_per_second=frames_per_second, **settings)

  def __post_init__(self):
    for name in ("gain_prob", "noise_prob", "pitch_prob", "mixup_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"config.data.augment.{name}={getattr(self, name)} is not a probability in [0, 1]")
    lo, hi = self.noise_snr_db
    if lo > hi:
      raise ConfigError(f"config.data.augment.noise_snr_db={self.noise_snr_db}: the minimum is above the maximum")
    if self.mixup_alpha <= 0:
      raise ConfigError(f"config.data.augment.mixup_alpha={self.mixup_alpha} must be positive")

  @property
  def is_identity(self) -> bool:
    """Every augmentation off (the default)."""
    probabilities = (self.gain_prob, self.noise_prob, self.pitch_prob, self.mixup_prob)
    return not any(probabilities) and not self.time_masks and not self.freq_masks

  def mixup_weight(self, rng: np.random.Generator) -> float | None:
    """The weight of the example's own clip in a mixup (>= 0.5, so it stays the dominant one), or
    None when this example is not mixed."""
    if not (self.mixup_prob and rng.random() < self.mixup_prob):
      return None
    weight = rng.beta(self.mixup_alpha, self.mixup_alpha)
    return max(weight, 1.0 - weight)

  def __call__(self, mel: np.ndarray, valid: int, rng: np.random.Generator) -> np.ndarray:
    mel = np.asarray(mel, np.float32)
    if self.gain_prob and rng.random() < self.gain_prob:
      mel = apply_gain(mel, valid, rng.uniform(-self.gain_db, self.gain_db), self.floor)
    if self.noise_prob and valid and rng.random() < self.noise_prob:
      mel = add_noise(mel, valid, rng.uniform(*self.noise_snr_db), self.floor, rng)
    if self.pitch_prob and rng.random() < self.pitch_prob:
      mel = shift_bins(mel, int(rng.integers(-self.pitch_bins, self.pitch_bins + 1)), self.floor)
    max_frames = int(round(self.time_mask_seconds * self.frames_per_second))
    for _ in range(self.time_masks):
      width = int(rng.integers(0, max_frames + 1))
      mel = mask_frames(mel, int(rng.integers(0, max(valid - width, 0) + 1)), min(width, valid), self.floor)
    n_mels = mel.shape[0]
    for _ in range(self.freq_masks):
      width = min(int(rng.integers(0, self.freq_mask_bins + 1)), n_mels)
      mel = mask_bands(mel, int(rng.integers(0, n_mels - width + 1)), width, self.floor)
    return mel


def default_config() -> ml_collections.ConfigDict:
  """`config.data.augment`: every augmentation off (MusCALL trains with random crops only)."""
  bound = ("floor", "frames_per_second")
  return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(Augmenter) if f.name not in bound})
