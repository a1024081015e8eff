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


@dataclasses.dataclass(frozen=True)
class WaveformCut:
  """`prepare --waveform_crop_seconds`: each file cut to its central `seconds` of samples before
  its log-mel (shorter files padded by `pad`), the clip an imported model's original embeds, as
  `mclap.load(...).embed_audio(crop="waveform")` cuts it; with `keep_longer`, longer files stay
  whole and only shorter ones are padded: a fused CLAP model's input (`crop="fusion"`)."""

  seconds: float
  pad: str = "zeros"
  keep_longer: bool = False

  def __call__(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    samples = int(round(self.seconds * sample_rate))
    if self.keep_longer:
      return pipeline.fusion_waveform(wave, samples, self.pad)
    return pipeline.waveform_crops(wave, samples, 1, self.pad)[0]

  def info(self) -> dict[str, Any]:
    """What `dataset_info.json` records of the cut (`pipeline.check_corpus` and the evaluators read it)."""
    keep = {"waveform_keep_longer": True} if self.keep_longer else {}
    return dict(waveform_crop_seconds=self.seconds, waveform_pad=self.pad, **keep)


def record_mel(wave: np.ndarray, mel_config: dict[str, Any], cut: WaveformCut | None) -> np.ndarray:
  """The log-mel a record stores: of the whole file, or of the file cut by `cut`."""
  return mel_lib.log_mel(cut(wave, mel_config["sample_rate"]) if cut else wave, mel_config)


def work_function(decode: Callable, settings: Any, cut: WaveformCut | None) -> functools.partial:
  """`decode` bound to its settings. The cut is bound only when set, so that the writer's
  description of whole-file work (what decides whether a shard is reused) is that of releases
  before the option, and their corpora resume."""
  return functools.partial(decode, settings=settings, **({"cut": cut} if cut else {}))


def decode_record(item: AudioItem, settings: DecodeSettings, cut: WaveformCut | None = None) -> dict[str, Any] | Reject:
  """The writer's work function for audio files (`cut`: see `WaveformCut`)."""
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
    "mel": record_mel(wave, mel_config, cut),
    "captions": list(item.captions),
    "tags": list(item.tags),
    "label": item.label,
  }
