"""The writer's work function for recordings: decode one listed file into a record.

It runs in the writer's worker processes; `writer.describe` of the bound function decides
whether a finished shard is reused, so its settings are part of a corpus's identity.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from mclap.data import audio, pipeline
from mclap.data import mel as mel_lib
from mclap.data.records import Reject
from mclap.prepare.listing import AudioItem


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  mel: tuple  # Sorted (key, value) pairs of the mel config (hashable, picklable).
  max_seconds: float | None
  min_seconds: float
  npy_sample_rate: int


def record_mel(wave: np.ndarray, mel_config: dict[str, Any], waveform_crop_seconds: float | None) -> np.ndarray:
  """The log-mel a record stores: of the whole file, or of its central `waveform_crop_seconds` of
  samples (zero-padded when shorter), the clip the original MusCALL embeds in evaluation; the
  crop is taken as `mclap.load(...).embed_audio(crop="waveform")` takes it."""
  if waveform_crop_seconds:
    samples = int(round(waveform_crop_seconds * mel_config["sample_rate"]))
    wave = pipeline.eval_crops(wave[None], samples, 1, 0.0)[0][0, 0]
  return mel_lib.log_mel(wave, mel_config)


def work_function(decode: Callable, settings: Any, waveform_crop_seconds: float) -> functools.partial:
  """`decode` bound to its settings. The crop is bound only when set, so that the writer's
  description of whole-file work (what decides whether a shard is reused) is that of releases
  before the option, and their corpora resume."""
  crop = {"waveform_crop_seconds": waveform_crop_seconds} if waveform_crop_seconds else {}
  return functools.partial(decode, settings=settings, **crop)


def decode_record(
  item: AudioItem, settings: DecodeSettings, waveform_crop_seconds: float | None = None
) -> dict[str, Any] | Reject:
  """The writer's work function for audio files (see `record_mel` for `waveform_crop_seconds`)."""
  if item.bad_metadata:
    return Reject(id=item.id, reason="bad metadata", detail=item.bad_metadata)
  mel_config = dict(settings.mel)
  with audio.decoder_messages() as said:
    try:
      wave = audio.load_audio(
        item.path,
        mel_config["sample_rate"],
        segment=item.segment,
        max_seconds=settings.max_seconds,
        min_seconds=settings.min_seconds,
        npy_sample_rate=settings.npy_sample_rate,
      )
      error = None
    except audio.AudioError as e:
      error = e
  if error is not None:
    detail = f"{item.path}{': ' + error.detail if error.detail else ''}"
    return Reject(id=item.id, reason=error.reason, detail=detail + (f" (decoder: {' / '.join(said)})" if said else ""))
  return {
    "id": item.id,
    "mel": record_mel(wave, mel_config, waveform_crop_seconds),
    "captions": list(item.captions),
    "tags": list(item.tags),
    "label": item.label,
  }
