"""Decoding any audio file (or MusCALL `.npy` waveform) to mono float32 at the corpus rate.

Files are read in a streaming way up to `max_seconds`, so a very long file costs no more memory
than the cap. Problems raise `AudioError` with one of the reasons that `rejects.jsonl` reports.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import soundfile
import soxr

SILENCE_PEAK = 1e-5  # Peak amplitude below which a clip counts as silent.


@dataclasses.dataclass
class AudioError(Exception):
  reason: str  # missing file | unreadable | empty | truncated | non-finite samples | silent | too short
  detail: str = ""

  def __str__(self) -> str:
    return f"{self.reason}: {self.detail}" if self.detail else self.reason


def _read_npy(
  path: pathlib.Path, segment: tuple[float, float] | None, max_seconds: float | None, rate: int
) -> np.ndarray:
  """MusCALL's waveforms: `[samples]` or `[channels, samples]` (channels first)."""
  try:
    data = np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise AudioError("unreadable", f"{type(e).__name__}: {e}") from e
  if data.ndim == 2 and data.shape[0] > data.shape[1]:
    data = data.T  # [samples, channels] written the other way round.
  if data.ndim not in (1, 2) or not np.issubdtype(data.dtype, np.number):
    raise AudioError("unreadable", f"array of shape {list(data.shape)} and dtype {data.dtype} is not a waveform")
  start, stop = _span(data.shape[-1], rate, segment, max_seconds)
  data = data[..., start:stop]
  return np.asarray(data if data.ndim == 1 else data.mean(axis=0), np.float32)


def _span(frames: int, rate: int, segment: tuple[float, float] | None, max_seconds: float | None) -> tuple[int, int]:
  """The frames to read: the segment if the file is long enough to hold it (else the whole file,
  which is then taken to be the segment already cut out), capped at `max_seconds`."""
  start, stop = 0, frames
  if segment is not None and frames >= int(segment[1] * rate):
    start, stop = int(segment[0] * rate), int(segment[1] * rate)
  if max_seconds is not None:
    stop = min(stop, start + int(max_seconds * rate))
  return start, stop


def _read_file(
  path: pathlib.Path, segment: tuple[float, float] | None, max_seconds: float | None
) -> tuple[np.ndarray, int]:
  try:
    f = soundfile.SoundFile(str(path))
  except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
    raise AudioError("unreadable", f"{type(e).__name__}: {e}") from e
  with f:
    rate, declared = f.samplerate, f.frames
    if "should be" in f.extra_info:  # libsndfile's note when a header promises more data than the file has.
      raise AudioError("truncated", " ".join(ln.strip() for ln in f.extra_info.splitlines() if "should be" in ln))
    start, stop = _span(declared, rate, segment, max_seconds)
    wanted = stop - start
    try:
      if start:
        f.seek(start)
      data = f.read(frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as e:
      raise AudioError("truncated", f"decoding stopped early: {e}") from e
  if declared <= 0 or len(data) == 0:
    raise AudioError("empty", "no audio frames")
  if len(data) < wanted:
    raise AudioError("truncated", f"header declares {declared} frames, {len(data)} could be read")
  return data.mean(axis=1), rate


def load_audio(
  path: str | pathlib.Path,
  sample_rate: int,
  *,
  segment: tuple[float, float] | None = None,
  max_seconds: float | None = None,
  min_seconds: float = 0.0,
  npy_sample_rate: int = 16000,
) -> np.ndarray:
  """Mono float32 waveform of `path` at `sample_rate`, at most `max_seconds` long.

  `segment` = (start, end) seconds reads just that part of a file that is long enough to hold it
  (a MusicCaps clip inside a whole YouTube recording); a shorter file is taken to be the segment
  already cut out, so both kinds of download work.

  `.npy` files are MusCALL waveforms at `npy_sample_rate`; everything else goes through
  libsndfile (WAV, FLAC, OGG/Vorbis, MP3, ...), any rate and channel count.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise AudioError("missing file", str(path))
  if path.suffix.lower() == ".npy":
    wave, rate = _read_npy(path, segment, max_seconds, npy_sample_rate), npy_sample_rate
  else:
    wave, rate = _read_file(path, segment, max_seconds)
  return conform(wave, rate, sample_rate, min_seconds)


def conform(wave: np.ndarray, rate: int, sample_rate: int, min_seconds: float = 0.0) -> np.ndarray:
  """Checks a decoded mono wave (empty, non-finite, silent, too short) and resamples it to
  `sample_rate`: the end of every decoding path."""
  if wave.size == 0:
    raise AudioError("empty", "no samples")
  if not np.isfinite(wave).all():
    raise AudioError("non-finite samples", f"{int((~np.isfinite(wave)).sum())} NaN/inf samples")
  if np.abs(wave).max() < SILENCE_PEAK:
    raise AudioError("silent", f"peak amplitude below {SILENCE_PEAK}")
  if len(wave) < min_seconds * rate:
    raise AudioError("too short", f"{len(wave) / rate:.2f}s < {min_seconds}s")
  if rate != sample_rate:
    wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
  return np.ascontiguousarray(wave, np.float32)
