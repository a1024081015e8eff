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


def record_mel(
  wave: np.ndarray, mel_config: dict[str, Any], waveform_crop_seconds: float | None, waveform_pad: str = "zeros"
) -> np.ndarray:
  """The log-mel a record stores: of the whole file, or of its central `waveform_crop_seconds` of
  samples (shorter files padded by `waveform_pad`), the clip an imported model's original embeds
  in evaluation, cut as `mclap.load(...).embed_audio(crop="waveform")` cuts it."""
  if waveform_crop_seconds:
    samples = int(round(waveform_crop_seconds * mel_config["sample_rate"]))
    wave = pipeline.waveform_crops(wave, samples, 1, waveform_pad)[0]
  return mel_lib.log_mel(wave, mel_config)


def work_function(
  decode: Callable, settings: Any, waveform_crop_seconds: float, waveform_pad: str
) -> functools.partial:
  """`decode` bound to its settings. The cut is bound only when set, so that the writer's
  description of whole-file work (what decides whether a shard is reused) is that of releases
  before the option, and their corpora resume."""
  cut = dict(waveform_crop_seconds=waveform_crop_seconds, waveform_pad=waveform_pad) if waveform_crop_seconds else {}
  return functools.partial(decode, settings=settings, **cut)


def decode_record(
  item: AudioItem, settings: DecodeSettings, waveform_crop_seconds: float | None = None, waveform_pad: str = "zeros"
) -> dict[str, Any] | Reject:
  """The writer's work function for audio files (see `record_mel` for the waveform cut)."""
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
    "mel": record_mel(wave, mel_config, waveform_crop_seconds, waveform_pad),
    "captions": list(item.captions),
    "tags": list(item.tags),
    "label": item.label,
  }
