"""Decoding any audio file (or MusCALL `.npy` waveform) to mono float32 at the corpus rate.

Files are read, downmixed and resampled block by block up to `max_seconds`, so a very long or
very wide file costs no more memory than the capped mono output. Problems raise `AudioError`
with one of the reasons that `rejects.jsonl` reports.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, TextIO

import numpy as np
import soundfile
import soxr

from mclap.errors import ItemError

# Files taken as audio wherever a folder is read (prepare's sources, mclap.embed); .npy holds a waveform.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".au", ".aiff", ".aif", ".npy")
# Audio that libsndfile does not decode (AAC, WMA, ...): named as such, with how to convert it.
OTHER_AUDIO_SUFFIXES = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".mka", ".ape", ".ac3", ".amr")
CONVERT_HINT = "convert to FLAC first, e.g. ffmpeg -i x.m4a x.flac"
SILENCE_PEAK = 1e-5  # Peak amplitude below which a clip counts as silent.
SEGMENT_TOLERANCE = 0.5  # Seconds a download of a clip may differ from the clip's length (codec padding).


class AudioError(ItemError):
  """Audio that cannot be used; reasons: missing file | unreadable | empty | truncated | ambiguous
  length | non-finite samples | silent | too short."""


# Frames read and resampled at a time: memory holds one block of the input at most.
BLOCK_FRAMES = 1 << 16


def _to_mono(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> np.ndarray:
  """Downmixes `[frames, channels]` blocks and resamples them to `sample_rate` as they come, so
  that an 8-channel 96 kHz hour costs the memory of its mono 16 kHz output, not of its samples."""
  stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ") if rate != sample_rate else None
  out = []
  for block in blocks:
    mono = np.ascontiguousarray(block.mean(axis=1), np.float32)
    out.append(stream.resample_chunk(mono) if stream else mono)
  if stream:
    out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
  return np.concatenate(out) if out else np.zeros(0, np.float32)


def _check_file(path: pathlib.Path) -> None:
  """Missing files, symlink loops, directories, FIFOs (which would block a reader forever) and
  zero-length files, each with its own reason."""
  try:
    info = path.stat()
  except FileNotFoundError:
    raise AudioError("missing file") from None
  except OSError as e:  # ELOOP: a symlink loop.
    raise AudioError("unreadable", str(e.strerror)) from None
  if not stat.S_ISREG(info.st_mode):
    raise AudioError("unreadable", "not a regular file")
  if info.st_size == 0:
    raise AudioError("empty", "zero bytes")


def _mp3_stream_bytes(head: bytes) -> tuple[int, int] | None:
  """(bytes of tags before the stream, stream bytes) that an MP3's Xing/Info header declares, or
  None without one. MP3 decoders pad a cut-off stream with silence, so this is how a truncated
  MP3 shows."""
  offset = 0
  if head[:3] == b"ID3" and len(head) >= 10:  # ID3v2 tag: its size is 4 syncsafe (7-bit) bytes.
    offset = 10 + sum((head[6 + i] & 0x7F) << (7 * (3 - i)) for i in range(4))
  frame = head[offset : offset + 200]
  at = max(frame.find(b"Xing"), frame.find(b"Info"))
  if at < 0 or len(frame) < at + 16:
    return None
  flags = int.from_bytes(frame[at + 4 : at + 8], "big")
  if not flags & 2:  # No byte count.
    return None
  field = at + 8 + (4 if flags & 1 else 0)
  return offset, int.from_bytes(frame[field : field + 4], "big")


def _read_npy(
  path: pathlib.Path, segment: tuple[float, float] | None, max_seconds: float | None, rate: int, sample_rate: int
) -> np.ndarray:
  """MusCALL's waveforms: `[samples]` or `[channels, samples]` (channels first), memory-mapped."""
  try:
    data = np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise AudioError("unreadable", f"{type(e).__name__}: {e}") from e
  if data.ndim == 2 and data.shape[0] > data.shape[1]:
    data = data.T  # [samples, channels] written the other way round.
  if data.ndim not in (1, 2) or not np.issubdtype(data.dtype, np.number):
    raise AudioError("unreadable", f"array of shape {list(data.shape)} and dtype {data.dtype} is not a waveform")
  data = data.reshape(-1, data.shape[-1])
  start, stop = _span(data.shape[-1], rate, segment, max_seconds)
  blocks = (data[:, i : min(i + BLOCK_FRAMES, stop)].T for i in range(start, stop, BLOCK_FRAMES))
  return _to_mono(blocks, rate, sample_rate)


def _span(frames: int, rate: int, segment: tuple[float, float] | None, max_seconds: float | None) -> tuple[int, int]:
  """The frames to read, capped at `max_seconds`: the segment if the file reaches its end (a whole
  recording), the whole file if it is as long as the segment (the segment already cut out);
  any other length could be either, so the file is rejected rather than paired with the wrong
  audio."""
  start, stop = 0, frames
  if segment is not None and frames >= int(segment[1] * rate):
    start, stop = int(segment[0] * rate), int(segment[1] * rate)
  elif segment is not None and abs(frames / rate - (segment[1] - segment[0])) > SEGMENT_TOLERANCE:
    raise AudioError(
      "ambiguous length",
      f"{frames / rate:.2f}s is neither the {segment[1] - segment[0]:g}s clip nor a recording reaching its end at "
      f"{segment[1]:g}s",
    )
  if max_seconds is not None:
    stop = min(stop, start + int(max_seconds * rate))
  return start, stop


def _read_file(
  path: pathlib.Path, segment: tuple[float, float] | None, max_seconds: float | None, sample_rate: int
) -> np.ndarray:
  try:
    f = soundfile.SoundFile(str(path))
  except soundfile.LibsndfileError as e:
    # libsndfile says "File does not exist or is not a regular file" of an existing file that no
    # decoder takes (`_check_file` ruled the rest out): say that instead.
    said = "no decoder recognises its content" if "not a regular file" in e.error_string else e.error_string
    if path.suffix.lower() in OTHER_AUDIO_SUFFIXES:
      said = f"{path.suffix.lower()} is not a format libsndfile decodes; {CONVERT_HINT}"
    raise AudioError("unreadable", said) from e
  except (RuntimeError, OSError) as e:
    raise AudioError("unreadable", f"{type(e).__name__}: {e}") from e
  with f:
    rate, declared = f.samplerate, f.frames
    if "should be" in f.extra_info:  # libsndfile's note when a header promises more data than the file has.
      raise AudioError("truncated", " ".join(ln.strip() for ln in f.extra_info.splitlines() if "should be" in ln))
    if f.format == "MP3":
      with open(path, "rb") as raw:
        declared_stream = _mp3_stream_bytes(raw.read(1 << 16))
      size = path.stat().st_size
      if declared_stream and size - declared_stream[0] < 0.99 * declared_stream[1]:
        raise AudioError("truncated", f"the MP3 header declares {declared_stream[1]} stream bytes, the file has {size}")
    start, stop = _span(declared, rate, segment, max_seconds)
    wanted, read = stop - start, 0

    def blocks():
      nonlocal read
      for block in f.blocks(BLOCK_FRAMES, frames=wanted, dtype="float32", always_2d=True):
        read += len(block)
        yield block

    try:
      if start:
        f.seek(start)
      wave = _to_mono(blocks(), rate, sample_rate)
    except (soundfile.LibsndfileError, RuntimeError) as e:
      said = e.error_string if isinstance(e, soundfile.LibsndfileError) else str(e)
      raise AudioError("truncated", f"decoding stopped early: {said}") from e
  if declared <= 0 or read == 0:
    raise AudioError("empty", "no audio frames")
  if read < wanted:
    raise AudioError("truncated", f"header declares {declared} frames, {read} could be read")
  return wave


@contextlib.contextmanager
def stderr_into(file: IO[bytes]) -> Iterator[TextIO]:
  """Sends what the process writes on its stderr (file descriptor 2: native decoders such as
  libmpg123 print their complaints there) into `file` while the block runs; yields a stream to the
  real stderr, for a progress bar. Process-wide: every thread's output goes to `file`."""
  sys.stderr.flush()
  saved = os.dup(2)
  terminal = os.fdopen(os.dup(saved), "w", buffering=1)
  os.dup2(file.fileno(), 2)
  try:
    yield terminal
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    terminal.close()


@contextlib.contextmanager
def decoder_messages() -> Iterator[list[str]]:
  """The lines native decoders print while the block runs, collected instead of printed over a
  progress bar, so that they land in a reject's detail (for a process that decodes one file at a
  time: prepare's workers)."""
  said: list[str] = []
  with tempfile.TemporaryFile() as capture:
    try:
      with stderr_into(capture):
        yield said
    finally:
      capture.seek(0)
      said.extend(line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip())


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

  `segment` = (start, end) seconds reads just that part of a file that reaches `end` (a MusicCaps
  clip inside a whole YouTube recording); a file as long as the segment (within
  `SEGMENT_TOLERANCE`) is the segment already cut out, so both kinds of download work; a file of
  any other length is rejected as "ambiguous length".

  `.npy` files are MusCALL waveforms at `npy_sample_rate`; everything else goes through
  libsndfile (WAV, FLAC, OGG/Vorbis, MP3, ...), any rate and channel count, recognised by its
  content whatever the file's extension.
  """
  path = pathlib.Path(path)
  _check_file(path)
  if path.suffix.lower() == ".npy":
    wave = _read_npy(path, segment, max_seconds, npy_sample_rate, sample_rate)
  else:
    wave = _read_file(path, segment, max_seconds, sample_rate)
  return conform(wave, sample_rate, sample_rate, min_seconds)


def conform(wave: np.ndarray, rate: int, sample_rate: int, min_seconds: float = 0.0) -> np.ndarray:
  """Resamples a decoded mono wave to `sample_rate` and checks it (empty, non-finite, silent, too
  short): the end of every decoding path."""
  if rate != sample_rate:
    wave = _to_mono([np.asarray(wave, np.float32)[:, None]], rate, sample_rate)
  if wave.size == 0:
    raise AudioError("empty", "no samples")
  if not np.isfinite(wave).all():
    raise AudioError("non-finite samples", f"{int((~np.isfinite(wave)).sum())} NaN/inf samples")
  if np.abs(wave).max() < SILENCE_PEAK:
    raise AudioError("silent", f"peak amplitude below {SILENCE_PEAK}")
  if len(wave) < min_seconds * sample_rate:
    raise AudioError("too short", f"{len(wave) / sample_rate:.2f}s < {min_seconds}s")
  return np.ascontiguousarray(wave, np.float32)
