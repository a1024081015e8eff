"""`--source tfds:<name>`: an audio dataset in a TFDS data directory, read with `tfds.data_source`.

TFDS's audio features need TensorFlow to be described, so this source needs the optional extra
`pip install 'mclap[tfds]'` (tensorflow-datasets and tensorflow-cpu); nothing else in mclap does.
The dataset must have been built in a random-access file format (`array_record`, TFDS's default
for `data_source`). The listing only counts examples; each worker opens the data source itself
and reads its examples by index, so the audio is decoded once, in parallel.

Which features are used, from the dataset's own feature description: the `Audio` feature (its
sample rate; integer samples are 16-bit PCM unless larger values occur, then 32-bit), a `Text`
feature named caption, captions, text or description (or a sequence of them) as captions, or the
one `--tfds_caption` names (other text features, such as TFDS gtzan's `audio/filename`, are not
descriptions), and a `ClassLabel` feature (label, genre, instrument, or the only one) as label and
tag. Which features were used is printed, and kept in `dataset_info.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import numpy as np

from mclap.data import audio
from mclap.data.records import Reject
from mclap.errors import UserError, first_line
from mclap.prepare import decode
from mclap.prepare.listing import Listing

CAPTION_KEYS = ("caption", "captions", "text", "description")
LABEL_KEYS = ("label", "genre", "instrument")
SPLIT_NAMES = {"valid": "validation", "val": "validation", "dev": "validation"}


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise UserError(
      "--source=tfds:<name> needs TensorFlow Datasets: pip install 'mclap[tfds]' "
      "(tensorflow-datasets and tensorflow-cpu)"
    ) from e
  return tfds


@dataclasses.dataclass(frozen=True)
class TfdsItem:
  id: str
  split: str  # The TFDS split name.
  index: int


@dataclasses.dataclass(frozen=True)
class TfdsSettings:
  name: str
  data_dir: str  # "" = TFDS's default data dir.
  audio_key: str
  sample_rate: int
  caption_key: str  # "" when the dataset has no text.
  label_key: str  # "" when the dataset has no class label.
  label_names: tuple[str, ...]
  mel: tuple  # Sorted (key, value) pairs of the mel config.
  max_seconds: float | None
  min_seconds: float


def _pick(features: dict[str, Any], kinds: tuple[str, ...], preferred: tuple[str, ...]) -> str:
  """The feature to use among those of the given kinds: a preferred name, else the only one."""
  candidates = [k for k, f in features.items() if type(f).__name__ in kinds]
  named = [k for k in preferred if k in candidates]
  return named[0] if named else (candidates[0] if len(candidates) == 1 else "")


def _is_text(feature: Any) -> bool:
  kind = type(feature).__name__
  return kind == "Text" or (kind == "Sequence" and type(feature.feature).__name__ == "Text")


def caption_feature(features: dict[str, Any], chosen: str = "") -> str:
  """The text feature whose values become captions: `chosen`, else one named as captions are
  (`CAPTION_KEYS`), else none. A dataset's only text feature is not taken for a description:
  it is often a file name or an id."""
  if chosen:
    if chosen not in features or not _is_text(features[chosen]):
      texts = sorted(k for k, f in features.items() if _is_text(f))
      raise UserError(f"--tfds_caption={chosen} is not a text feature of the dataset (text features: {texts})")
    return chosen
  return next((k for k in CAPTION_KEYS if k in features and _is_text(features[k])), "")


def list_items(
  spec: str,
  data_dir: str,
  mel_config: dict,
  max_seconds: float | None,
  min_seconds: float,
  caption: str = "",
  cut: decode.WaveformCut | None = None,
):
  """The listing and work function of `tfds:<name>` (name as TFDS takes it: `gtzan`, `name:1.0.0`);
  `caption` names the text feature to use as captions (default: see `caption_feature`);
  `cut`: see `decode.WaveformCut`."""
  tfds = _tfds()
  name = spec.removeprefix("tfds:")
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises several kinds for an unknown name or an empty directory.
    where = data_dir or "the default data dir"
    raise UserError(f"cannot open TFDS dataset '{name}' in {where}: {first_line(e)}") from e
  if not builder.is_prepared():
    raise UserError(f"TFDS dataset '{name}' is not built in {builder.data_dir}; build it there first (tfds build)")
  features = {k: builder.info.features[k] for k in builder.info.features.keys()}
  audio_key = _pick(features, ("Audio",), ("audio",))
  if not audio_key:
    raise UserError(f"TFDS dataset '{name}' has no single Audio feature (features: {sorted(features)})")
  caption_key = caption_feature(features, caption)
  label_key = _pick(features, ("ClassLabel",), LABEL_KEYS)
  label_names = tuple(features[label_key].names) if label_key else ()
  settings = TfdsSettings(
    name=name,
    data_dir=data_dir,
    audio_key=audio_key,
    sample_rate=int(features[audio_key].sample_rate or 0),
    caption_key=caption_key,
    label_key=label_key,
    label_names=label_names,
    mel=tuple(sorted(mel_config.items())),
    max_seconds=max_seconds,
    min_seconds=min_seconds,
  )
  if not settings.sample_rate:
    raise UserError(f"TFDS dataset '{name}': its Audio feature '{audio_key}' declares no sample rate")
  splits = {}
  for split, info in builder.info.splits.items():
    ours = SPLIT_NAMES.get(split, split)
    splits[ours] = [TfdsItem(id=f"{split}/{i}", split=split, index=i) for i in range(info.num_examples)]
  extra = {
    "tfds": {"name": name, "version": str(builder.info.version), "audio": audio_key, "caption": caption_key},
  }
  unused = sorted(k for k, f in features.items() if _is_text(f) and k != caption_key)
  print(
    f"tfds:{name}: audio from '{audio_key}', captions from {repr(caption_key) if caption_key else 'no feature'}"
    f"{f', labels from {label_key!r}' if label_key else ''}"
    f"{f'; text features not used as captions: {unused} (--tfds_caption FEATURE uses one)' if unused else ''}",
    file=sys.stderr,
  )
  if label_names:
    extra["label_names"] = list(label_names)
  listing = Listing(splits, extra, require_captions=bool(caption_key))
  return listing, decode.work_function(decode_example, settings, cut)


@functools.cache
def _data_source(name: str, data_dir: str, split: str):
  return _tfds().data_source(name, data_dir=data_dir or None, split=split)


def to_float(samples: np.ndarray) -> np.ndarray:
  """Mono float32 from TFDS audio `[samples]` or `[samples, channels]`: floats as they are,
  integers as 16-bit PCM (32-bit if larger values occur)."""
  data = np.asarray(samples)
  wave = data.astype(np.float64)
  if wave.ndim == 2:
    wave = wave.mean(axis=1)
  if np.issubdtype(data.dtype, np.integer):
    wave /= 2.0**15 if np.abs(wave).max(initial=0) <= 2**15 else 2.0**31
  return wave.astype(np.float32)


def _texts(value: Any) -> list[str]:
  values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def decode_example(
  item: TfdsItem, settings: TfdsSettings, cut: decode.WaveformCut | None = None
) -> dict[str, Any] | Reject:
  """The writer's work function: one TFDS example -> record (`cut`: see `decode.WaveformCut`)."""
  example = _data_source(settings.name, settings.data_dir, item.split)[item.index]
  mel_config = dict(settings.mel)
  wave = to_float(example[settings.audio_key])
  if settings.max_seconds is not None:
    wave = wave[: int(settings.max_seconds * settings.sample_rate)]
  try:
    wave = audio.conform(wave, settings.sample_rate, mel_config["sample_rate"], settings.min_seconds)
  except audio.AudioError as e:
    return Reject(id=item.id, reason=e.reason, detail=e.detail)
  label = int(example[settings.label_key]) if settings.label_key else -1
  return {
    "id": item.id,
    "mel": decode.record_mel(wave, mel_config, cut),
    "captions": _texts(example[settings.caption_key]) if settings.caption_key else [],
    "tags": [settings.label_names[label]] if label >= 0 else [],
    "label": label,
  }
