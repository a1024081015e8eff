"""Grain input pipelines: crop, tokenize and batch prepared records for training and evaluation.

Both pipelines stay `grain.MapDataset`s up to batching, so element `i` of the output is a pure
function of (seed, i): the batches do not depend on the number of worker processes, and an
iterator's state is just a position, which `get_state`/`set_state` save and restore. Each JAX
process reads its own interleaved slice of the global order (multi-host ready).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from mclap.data import augment, records
from mclap.data import features as features_lib
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.data.tokenizer import TextRows, TextTokenizer
from mclap.errors import ConfigError

Example = dict[str, Any]


def crop_or_pad(mel: np.ndarray, length: int, start: int, pad_value: float) -> tuple[np.ndarray, int]:
  """`mel[:, start:start+length]`, padded on the right with `pad_value`; also the valid length."""
  crop = mel[:, start : start + length]
  valid = crop.shape[1]
  if valid < length:
    crop = np.pad(crop, ((0, 0), (0, length - valid)), constant_values=pad_value)
  return crop, valid


def crop_start(frames: int, length: int, rng: np.random.Generator | None) -> int:
  """Uniform random start (training) or the central crop (rng None; MusCALL's evaluation)."""
  room = max(frames - length, 0)
  return int(rng.integers(room + 1)) if rng is not None else room // 2


def evenly_spaced_starts(frames: int, length: int, count: int) -> list[int]:
  """Starts of `count` crops from the first to the last, evenly spaced (they overlap when the clip
  is shorter than `count` crops, and all start at 0 when it is shorter than one)."""
  room = max(frames - length, 0)
  return [int(round(room * i / (count - 1))) for i in range(count)]


WAVEFORM_PADS = ("zeros", "repeat")


def waveform_crops(wave: np.ndarray, length: int, count: int, pad: str = "zeros") -> np.ndarray:
  """`count` evenly spaced crops `[count, length]` of a waveform (1: the central one); a shorter
  one is zero-padded, after being repeated as many whole times as fit with `pad` "repeat"
  (LAION-CLAP's "repeatpad")."""
  if pad not in WAVEFORM_PADS:
    raise ConfigError(f"waveform pad {pad!r}; use {' or '.join(WAVEFORM_PADS)}")
  if pad == "repeat" and 0 < len(wave) < length:
    wave = np.tile(wave, length // len(wave))
  return eval_crops(wave[None], length, count, 0.0)[0][:, 0]


def fusion_waveform(wave: np.ndarray, length: int, pad: str) -> np.ndarray:
  """A fused CLAP model's clip: the whole waveform when longer than `length` samples (its views
  come from the whole log-mel), else padded to `length` as `waveform_crops` pads."""
  return wave if len(wave) > length else waveform_crops(wave, length, 1, pad)[0]


def _linear_resampling(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` weights of PyTorch's linear resampling with `align_corners=False` (no
  antialiasing), as `interpolate(mode="bilinear")` applies along one axis."""
  weights = np.zeros((n_out, n_in))
  for out in range(n_out):
    position = max((out + 0.5) * n_in / n_out - 0.5, 0.0)
    low = min(int(position), n_in - 1)
    high, t = min(low + 1, n_in - 1), position - low
    weights[out, low] += 1 - t
    weights[out, high] += t
  return weights


def fusion_views(
  mel: np.ndarray, length: int, pad_value: float = 0.0, rng: np.random.Generator | None = None
) -> np.ndarray:
  """The four views `[4, n_mels, length]` a fused CLAP model takes of a log-mel `[n_mels, frames]`:
  for a clip longer than `length` frames, the whole of it shrunk to `length` (linear resampling in
  time, as the original's `interpolate`) and three windows of `length` frames starting in the
  first, middle and last third of the possible starts (drawn uniformly in each with `rng`, as the
  original trains; their middles without); a clip of at most `length` frames, padded to it with
  `pad_value`, four times."""
  frames = mel.shape[1]
  if frames <= length:
    return np.stack([crop_or_pad(mel, length, 0, pad_value)[0]] * 4)
  thirds = [part if len(part) else np.zeros(1, int) for part in np.array_split(np.arange(frames - length + 1), 3)]
  pick = (lambda part: part[len(part) // 2]) if rng is None else rng.choice
  shrunk = (_linear_resampling(frames, length) @ mel.T.astype(np.float64)).T.astype(mel.dtype)
  return np.stack([shrunk, *(mel[:, s : s + length] for s in map(int, map(pick, thirds)))])


def eval_crops(mel: np.ndarray, length: int, count: int, pad_value: float) -> tuple[np.ndarray, int]:
  """`count` evenly spaced crops `[count, n_mels, length]` of an evaluated clip (`count` 1: the
  central one), and the first crop's valid length."""
  starts = evenly_spaced_starts(mel.shape[1], length, count) if count > 1 else [crop_start(mel.shape[1], length, None)]
  crops = [crop_or_pad(mel, length, start, pad_value) for start in starts]
  return np.stack([c for c, _ in crops]), crops[0][1]


def check_corpus(info: dict[str, Any], config: ml_collections.ConfigDict, corpus_dir: str) -> None:
  """The corpus must have been prepared with the mel settings the config (and model) expects, and
  clips cut (`prepare --waveform_crop_seconds`) to its crop length if cut at all; or hold the
  precomputed features (dimension, frame rate) that `config.data.features` names."""
  if records.input_field(info) == "features" or "features" in config.data:
    _check_features(info, config, corpus_dir)
    return
  cut = info.get("waveform_crop_seconds")
  if cut and cut != config.data.crop_seconds:
    held = f"holds the central {cut:g} s of each file"
    if info.get("waveform_keep_longer"):
      held = f"pads shorter files to {cut:g} s"
    raise records.CorpusError(
      f"{corpus_dir} {held} (prepared with --waveform_crop_seconds); the model "
      f"takes {config.data.crop_seconds:g} s crops: prepare it with --waveform_crop_seconds "
      f"{config.data.crop_seconds:g}"
    )
  wanted = config.data.mel.to_dict()
  have = info.get("mel", {})
  diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
  if diff:
    details = "; ".join(f"{k}: corpus {a!r}, config {b!r}" for k, (a, b) in diff.items())
    raise records.CorpusError(
      f"{corpus_dir} was prepared with other mel settings than config.data.mel ({details}). A model reads only "
      "the mels it was made for: prepare the corpus for it with `python -m mclap.data.prepare --config <this "
      "config> ...` (a bundle's: --config configs/finetune.py:BUNDLE; or matching --mel.* flags); "
      "--config.data.mel.* set to the corpus values suits only a new model"
    )


def _check_features(info: dict[str, Any], config: ml_collections.ConfigDict, corpus_dir: str) -> None:
  """A features model reads a corpus of the features it was made for, and only such a corpus."""
  if "features" not in config.data:
    have = info["features"]
    raise records.CorpusError(
      f"{corpus_dir} holds precomputed features (dim {have['dim']}, {have['frame_rate']:g} frames/s), not log-mels: "
      f"train on it with configs/features.py --config.data.features.dim={have['dim']} "
      f"--config.data.features.frame_rate={have['frame_rate']:g}"
    )
  if records.input_field(info) != "features":
    raise records.CorpusError(
      f"{corpus_dir} holds log-mels; config.data.features reads a corpus of precomputed features "
      "(python -m mclap.data.prepare --source features)"
    )
  wanted, have = features_lib.check_config(config.data.features), info["features"]
  if diff := [k for k in wanted if float(have[k]) != wanted[k]]:
    details = "; ".join(f"{k}: corpus {have[k]:g}, config {wanted[k]:g}" for k in diff)
    flags = " ".join(f"--config.data.features.{k}={have[k]:g}" for k in diff)
    raise records.CorpusError(
      f"{corpus_dir} holds other features than config.data.features ({details}); a new model takes them with {flags}"
    )


@dataclasses.dataclass(frozen=True)
class _AttachIndex:
  """Adds the record's index in its split (Grain passes indices past the end in later epochs)."""

  num_records: int

  def __call__(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "index": index % self.num_records}


@dataclasses.dataclass(frozen=True)
class _MarkValid:
  """Evaluation padding: positions past the split's end repeat early records with valid=0."""

  num_records: int

  def __call__(self, position: int, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "valid": int(position < self.num_records)}


def split_sentences(text: str) -> list[str]:
  """Sentences of a caption: split after ., ! or ? followed by white space."""
  return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def positives(captions: list[str], unit: str) -> list[str]:
  """The texts that describe a clip: its captions, or every sentence of every caption."""
  captions = [c.strip() for c in captions if c.strip()]
  return [s for c in captions for s in split_sentences(c)] if unit == "sentences" else captions


@dataclasses.dataclass(frozen=True)
class ToExample:
  """Record -> fixed-shape example: mel crop (augmented in training), tokens, label, multi-hot tags.

  The crop is of the record's `field`: its log-mel, or its feature frames (a features corpus);
  either is the example's `mel`, the audio tower's input `[rows, frames]`.

  With a random generator (training) the crop is random and augmented, and the text a random
  positive (`texts_per_clip` of them, `tokens` then `[K, max_tokens]`); without one (evaluation)
  the crop is central, nothing is augmented, and the text is the first positive (or all joined).
  `other_text` adds a second text per example (`other_tokens`): a `negative` (a text that is not
  a positive of the clip), or for `match` a positive or a negative with even odds
  (`other_match` 1 or 0).
  """

  crop_frames: int
  pad_value: float
  tokenizer: TextTokenizer | TextRows  # TextRows: each text one token, its row in a frozen encoder's table.
  tag_vocab: tuple[str, ...]
  caption: str  # random | first | join, over the positives.
  positives: str = "captions"  # captions | sentences | tags.
  texts_per_clip: int = 1
  other_text: str = ""  # "" | negative | match.
  augmenter: augment.Augmenter | None = None
  partners: Any = None  # The split's records, to draw mixup partners from.
  partner_texts: Any = None  # The split's records' texts (`CorpusReader.texts`), to draw negative texts from.
  views: int = 1  # 2: a second, independently augmented view of the same crop (`mel_view2`, for SSL).
  with_text: bool = True  # False: audio, label and tags only (zero-shot evaluation of caption-less corpora).
  eval_crops: int = 1  # > 1 (evaluation): that many evenly spaced crops, `mel [crops, n_mels, frames]`.
  fusion: bool = False  # A fused CLAP model's four views (`fusion_views`), `mel [4, n_mels, frames]`.
  field: str = "mel"  # The record's input: "mel", or "features" (`records.INPUT_FIELDS`).

  def _crop(self, mel: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    if self.fusion:
      return fusion_views(mel, self.crop_frames, self.pad_value, rng), min(mel.shape[1], self.crop_frames)
    if rng is None and self.eval_crops > 1:
      return eval_crops(mel, self.crop_frames, self.eval_crops, self.pad_value)
    return crop_or_pad(mel, self.crop_frames, crop_start(mel.shape[1], self.crop_frames, rng), self.pad_value)

  def _positives(self, record: dict[str, Any]) -> list[str]:
    texts = list(record["tags"]) if self.positives == "tags" else positives(record["captions"], self.positives)
    if not texts:
      raise records.CorpusError(f"record {record['id']!r} has no {self.positives}; data.positives needs them")
    return texts

  def texts_of(self, record: dict[str, Any]) -> list[str]:
    """Every text an example of `record` can carry as its clip's: its positives, and their join."""
    texts = self._positives(record)
    return [*texts, " ".join(texts)] if self.caption == "join" else texts

  def _texts(self, texts: list[str], rng: np.random.Generator | None) -> list[str]:
    """The clip's texts for this example: K distinct random positives (repeated in a random order
    when the clip has fewer), or evaluation's first / joined one."""
    if rng is None or self.caption != "random":
      return [" ".join(texts) if self.caption == "join" else texts[0]]
    order = rng.permutation(len(texts)) if self.texts_per_clip > 1 else [rng.integers(len(texts))]
    return [texts[order[i % len(order)]] for i in range(self.texts_per_clip)]

  def _negative(self, record: dict[str, Any], rng: np.random.Generator) -> str:
    """A uniformly drawn text that does not describe the clip: a tag it lacks, or a positive of
    another record (other records are drawn until one has a text this clip does not)."""
    own = set(self._positives(record))
    for _ in range(100):
      if self.positives == "tags":
        pool = self.tag_vocab
      else:
        other = int(rng.integers(len(self.partner_texts) - 1))
        pool = self._positives(self.partner_texts[other + (other >= record["index"])])
      if pool := [t for t in pool if t not in own]:
        return pool[rng.integers(len(pool))]
    raise records.CorpusError(f"no text unlike record {record['id']!r}'s found for a negative in 100 draws")

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> Example:
    crop, valid = self._crop(record[self.field], rng)
    tags = set(record["tags"])
    if rng is not None and self.augmenter is not None:
      weight = self.augmenter.mixup_weight(rng)
      if weight is not None:
        # Mixup: this clip stays dominant (weight >= 0.5) and keeps its caption and label; the
        # partner's tags are added, since both clips are audible in the mix.
        partner = self.partners[int(rng.integers(len(self.partners)))]
        other, other_valid = self._crop(partner[self.field], rng)
        crop = augment.mix(np.asarray(crop, np.float32), np.asarray(other, np.float32), weight, self.pad_value)
        valid = max(valid, other_valid)
        tags.update(partner["tags"])
      if self.views == 2:
        second_view = self.augmenter(crop, valid, rng)
      crop = self.augmenter(crop, valid, rng)
    multi_hot = np.zeros(len(self.tag_vocab), np.uint8)
    multi_hot[[self.tag_vocab.index(t) for t in tags if t in self.tag_vocab]] = 1
    example = {
      "mel": np.asarray(crop, np.float16),
      "mel_frames": np.int32(valid),
      "label": np.int32(record["label"]),
      "tags": multi_hot,
      "index": np.int32(record["index"]),
      "valid": np.int32(record.get("valid", 1)),
    }
    if rng is not None and self.views == 2:
      example["mel_view2"] = np.asarray(second_view, np.float16)
    if not self.with_text:
      return example
    texts = self._positives(record)
    tokens, token_mask = self.tokenizer(self._texts(texts, rng))
    single = rng is None or self.texts_per_clip == 1
    example.update(tokens=tokens[0] if single else tokens, token_mask=token_mask[0] if single else token_mask)
    if rng is not None and self.other_text:
      match = self.other_text == "match" and rng.random() < 0.5
      other_text = texts[rng.integers(len(texts))] if match else self._negative(record, rng)
      other_tokens, other_mask = self.tokenizer([other_text])
      example.update(other_tokens=other_tokens[0], other_token_mask=other_mask[0], other_match=np.int32(match))
    return example


def _reader_and_transform(
  config, split: str, train: bool, with_text: bool = True, text_rows: TextRows | None = None
) -> tuple[records.CorpusReader, ToExample]:
  reader = records.CorpusReader(config.data.dir, split, require_captions=with_text and config.data.positives != "tags")
  check_corpus(reader.info, config, config.data.dir)
  if config.data.caption not in ("random", "first", "join"):
    raise ConfigError(f"config.data.caption={config.data.caption!r}; use random, first or join")
  if config.data.views not in (1, 2):
    raise ConfigError(f"config.data.views={config.data.views}; use 1, or 2 for two augmented views (SSL)")
  if config.data.positives not in ("captions", "sentences", "tags"):
    raise ConfigError(f"config.data.positives={config.data.positives!r}; use captions, sentences or tags")
  if config.data.other_text not in ("", "negative", "match"):
    raise ConfigError(f"config.data.other_text={config.data.other_text!r}; use '', negative or match")
  if config.data.eval_crops < 1:
    raise ConfigError(f"config.data.eval_crops={config.data.eval_crops}; use 1 (the central crop) or more (averaged)")
  if config.data.texts_per_clip > 1 and config.data.caption != "random":
    raise ConfigError(
      f"config.data.texts_per_clip={config.data.texts_per_clip} draws random positives; set config.data.caption=random"
    )
  views, augmenter = (config.data.views if train else 1), None
  if reader.field == "features":
    # Zero frames pad a short track; the augmentations are of log-mels.
    frame_rate, pad_value = reader.info["features"]["frame_rate"], 0.0
    crop_frames = features_lib.crop_frames(config.data.crop_seconds, frame_rate)
    augments = augment.Augmenter.from_config(config.data.augment, pad_value, frame_rate or 1.0)
    if not augments.is_identity or config.data.views != 1:
      raise ConfigError(
        "config.data.augment.* and config.data.views=2 transform log-mels; a features corpus takes neither: "
        "set them off (configs/features.py does)"
      )
  else:
    mel_config = reader.info["mel"]
    pad_value, crop_frames = mel_lib.floor_db(mel_config), mel_lib.num_frames(config.data.crop_seconds, mel_config)
    if train:
      frames_per_second = mel_config["sample_rate"] / mel_config["hop_length"]
      augmenter = augment.Augmenter.from_config(config.data.augment, pad_value, frames_per_second)
      if augmenter.is_identity and views == 1:
        augmenter = None  # Nothing to do: keep the crop's float16 path free of the float32 round trip.
  fusion = config.data.get("crop", "mel") == "fusion"
  if fusion and (augmenter or config.data.eval_crops > 1):
    raise ConfigError(
      "config.data.crop=fusion (a fused CLAP model's four views of a clip) takes no augmentation, second view or "
      "several evaluation crops; set config.data.augment.* off, config.data.views=1 and config.data.eval_crops=1"
    )
  transform = ToExample(
    crop_frames=crop_frames,
    pad_value=pad_value,
    tokenizer=text_rows or tokenizer_lib.for_config(config),
    tag_vocab=tuple(reader.info.get("tags", [])),
    caption=config.data.caption,
    positives=config.data.positives,
    texts_per_clip=config.data.texts_per_clip if train else 1,
    other_text=config.data.other_text if train else "",
    augmenter=augmenter,
    partners=reader if augmenter and augmenter.mixup_prob else None,
    partner_texts=reader.texts() if train and config.data.other_text and config.data.positives != "tags" else None,
    views=views,
    with_text=with_text,
    eval_crops=1 if train else config.data.eval_crops,
    fusion=fusion,
    field=reader.field,
  )
  return reader, transform


def _local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ConfigError(
      f"batch size {global_batch} is not divisible by the {process_count} processes; use a multiple of {process_count}"
    )
  return global_batch // process_count


def train_dataset(
  config: ml_collections.ConfigDict,
  *,
  split: str = "",
  epochs: int | None = None,
  batch_size: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  text_rows: TextRows | None = None,
) -> grain.MapDataset:
  """Batches of this process's share of the global batch (`batch_size`, default
  `train.batch_size`) of training examples of `split` (default the training split), reshuffled
  every epoch, for `epochs` passes (None: forever). Validation takes one pass over its split this
  way, so the objective sees the kind of batch it trains on. With `text_rows` (a frozen text
  tower's table, `corpus_texts`), each text is one token: its row."""
  split = split or config.data.train_split
  batch_size = batch_size or config.train.batch_size
  reader, transform = _reader_and_transform(config, split, train=True, text_rows=text_rows)
  local_batch = _local_batch_size(batch_size, process_count)
  if len(reader) < batch_size:
    raise records.CorpusError(
      f"split '{split}' of {config.data.dir} has {len(reader)} records, fewer "
      f"than one batch ({batch_size}); lower --config.train.batch_size"
    )
  ds = grain.MapDataset.source(reader).map_with_index(_AttachIndex(len(reader)))
  ds = ds.shuffle(seed=config.train.seed).repeat(epochs)
  # Crops and augmentations are drawn per position in the global order, before each process takes
  # its slice: the global batch is the same whatever the number of processes.
  ds = ds.random_map(transform, seed=config.train.seed)
  ds = ds[process_index::process_count]
  return ds.batch(local_batch, drop_remainder=True)


def corpus_texts(config: ml_collections.ConfigDict, splits: Sequence[str]) -> list[str]:
  """Every text the training pipelines of `splits` can give the text tower, each once, sorted:
  the records' positives (and their joins), and the tag vocabulary whose tags are negatives."""
  texts = set()
  for split in splits:
    reader, transform = _reader_and_transform(config, split, train=True)
    if transform.positives == "tags":
      texts.update(transform.tag_vocab)
    for record in reader.texts():
      texts.update(transform.texts_of(record))
  return sorted(texts)


def eval_dataset(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  with_text: bool = True,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.MapDataset:
  """Every record of `split` exactly once, in order: central crops (or `data.eval_crops` evenly
  spaced ones, `mel [B, crops, n_mels, frames]`), no augmentation, and the first
  positive (all joined if `data.caption` is "join"; no text at all without `with_text`): without
  an RNG, `ToExample` never samples.

  The last global batch is padded with repeats marked `valid == 0`; metrics must mask them.
  """
  reader, transform = _reader_and_transform(config, split, train=False, with_text=with_text)
  n = len(reader)
  if n == 0:
    raise records.CorpusError(f"split '{split}' of {config.data.dir} is empty; it needs at least one record")
  global_batch = config.data.eval_batch_size
  local_batch = _local_batch_size(global_batch, process_count)
  padded = math.ceil(n / global_batch) * global_batch
  ds = grain.MapDataset.source(reader).map_with_index(_AttachIndex(len(reader)))
  ds = ds.repeat(math.ceil(padded / n))[:padded].map_with_index(_MarkValid(n))
  ds = ds[process_index::process_count].map(transform)
  return ds.batch(local_batch)


def iterate(ds: grain.MapDataset, num_workers: int, prefetch: int) -> grain.DatasetIterator:
  """A checkpointable iterator, prefetched by `num_workers` processes (0: in this process), each
  building at most `prefetch` batches ahead, in as many threads. (Grain's default is 500 elements
  in flight, and an element here is a whole batch.)"""
  if prefetch < 1:
    raise ConfigError(f"config.data.prefetch={prefetch}; use 1 or more batches (2 keeps a step's input ready)")
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    start = functools.partial(start_worker, parent=os.getpid())
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=start)
  return iter(it_ds)


def start_worker(worker_index: int, worker_count: int, *, parent: int) -> None:
  """Grain worker start-up: the parent (the process that started the workers, `parent`) alone
  decides when its workers stop.

  Ctrl-C in a terminal (SIGINT) and Slurm's SIGTERM reach every process of the job; a worker that
  died of them printed a traceback and lost its batches in flight while the trainer was finishing
  its step and saving. Workers ignore both, and stop when the parent closes its iterator (Grain's
  stop event). A parent killed with SIGKILL (or by the OOM killer) cannot stop them, so each
  worker ends itself within a second of its parent's death rather than live on holding its memory,
  also a worker still starting when its parent died (it finds itself adopted by another process).
  """
  del worker_index, worker_count
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)

  def watch() -> None:
    while os.getppid() == parent:  # A dead parent's children are adopted by another process.
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, name="mclap-exit-with-parent", daemon=True).start()
