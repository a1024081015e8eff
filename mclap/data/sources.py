"""Sources of real audio: each lists `AudioItem`s per split; `decode_record` turns one into a record.

Listing is cheap and done in the parent; decoding and the log-mel run in the writer's worker
processes. Items that cannot become records (missing or broken files, empty captions, duplicate
ids) are listed anyway and rejected on the way, so `rejects.jsonl` accounts for every input.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import pathlib
from typing import Any

from mclap.data import audio
from mclap.data import mel as mel_lib
from mclap.data.writer import Reject
from mclap.errors import UserError

SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".au", ".aiff", ".npy")


@dataclasses.dataclass(frozen=True)
class AudioItem:
  id: str
  path: str
  captions: tuple[str, ...] = ()
  tags: tuple[str, ...] = ()
  label: int = -1


@dataclasses.dataclass
class Listing:
  """What a source lists: items per split, extra `dataset_info.json` fields, and whether every
  record needs a caption (caption corpora) or not (tagging and classification sets)."""

  splits: dict[str, list[AudioItem]]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  require_captions: bool = True


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  mel: tuple  # Sorted (key, value) pairs of the mel config (hashable, picklable).
  max_seconds: float | None
  min_seconds: float
  npy_sample_rate: int


def decode_record(item: AudioItem, settings: DecodeSettings) -> dict[str, Any] | Reject:
  """The writer's work function for audio files."""
  mel_config = dict(settings.mel)
  try:
    wave = audio.load_audio(
      item.path,
      mel_config["sample_rate"],
      max_seconds=settings.max_seconds,
      min_seconds=settings.min_seconds,
      npy_sample_rate=settings.npy_sample_rate,
    )
  except audio.AudioError as e:
    return Reject(id=item.id, reason=e.reason, detail=f"{item.path}: {e.detail}")
  return {
    "id": item.id,
    "mel": mel_lib.log_mel(wave, mel_config),
    "captions": list(item.captions),
    "tags": list(item.tags),
    "label": item.label,
  }


def hashed_split(item_id: str, seed: int) -> str:
  """80/10/10 train/validation/test by a seeded hash of the id: stable as the corpus grows."""
  bucket = int(hashlib.sha1(f"{seed}:{item_id}".encode()).hexdigest(), 16) % 1000 / 1000
  total = 0.0
  for name, fraction in SPLIT_FRACTIONS:
    total += fraction
    if bucket < total:
      return name
  return SPLIT_FRACTIONS[-1][0]


def _split_tags(value: Any) -> tuple[str, ...]:
  if isinstance(value, list):
    return tuple(str(t).strip() for t in value if str(t).strip())
  return tuple(t.strip() for t in str(value or "").replace(";", ",").split(",") if t.strip())


def _captions(value: Any) -> tuple[str, ...]:
  values = value if isinstance(value, list) else [value]
  return tuple(str(v).strip() for v in values if v is not None)


def audiocaption(root: pathlib.Path) -> Listing:
  """MusCALL's layout: `dataset_{train,val,test}.json` lists of {audio_id, caption, audio_path},
  with `audio_path` relative to `root/audio/`."""
  splits = {}
  for name, file in (
    ("train", "dataset_train.json"),
    ("validation", "dataset_val.json"),
    ("test", "dataset_test.json"),
  ):
    path = root / file
    if not path.is_file():
      raise UserError(f"{path} not found: --source=audiocaption expects dataset_train/val/test.json in {root}")
    try:
      entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path} is not valid JSON ({e})") from e
    items = []
    for i, entry in enumerate(entries):
      if not isinstance(entry, dict) or "audio_path" not in entry:
        items.append(AudioItem(id=f"{file}#{i}", path=""))  # Rejected as a missing file.
        continue
      items.append(
        AudioItem(
          id=str(entry.get("audio_id", entry["audio_path"])),
          path=str(root / "audio" / entry["audio_path"]),
          captions=_captions(entry.get("caption", "")),
        )
      )
    splits[name] = items
  return Listing(splits)


def _metadata_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  if path.suffix.lower() == ".jsonl":
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise UserError(f"{path} line {n} is not valid JSON ({e})") from e
    return rows
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def folder(root: pathlib.Path, seed: int, metadata: str = "") -> Listing:
  """A folder of audio files plus a CSV or JSONL with `path, caption[, tags][, split]`.

  Paths are relative to `root`; tags are a list or a comma/semicolon-separated string; rows
  without a split are assigned one by a seeded hash of the path.
  """
  candidates = [pathlib.Path(metadata)] if metadata else [root / "metadata.csv", root / "metadata.jsonl"]
  path = next((p for p in candidates if p.is_file()), None)
  if path is None:
    raise UserError(
      f"no metadata file: --source=folder needs {' or '.join(map(str, candidates))} "
      "with columns path, caption[, tags][, split] (or pass --metadata)"
    )
  rows = _metadata_rows(path)
  if rows and "path" not in rows[0]:
    raise UserError(f"{path} has no 'path' column (columns: {sorted(rows[0])})")
  splits = {name: [] for name, _ in SPLIT_FRACTIONS}
  for row in rows:
    rel = str(row.get("path") or "")
    split = (row.get("split") or "").strip() or hashed_split(rel, seed)
    if split not in splits:
      raise UserError(f"{path}: row for '{rel}' has split '{split}'; use train, validation or test")
    splits[split].append(
      AudioItem(
        id=rel, path=str(root / rel), captions=_captions(row.get("caption", "")), tags=_split_tags(row.get("tags"))
      )
    )
  return Listing(splits)


def _gtzan_key(entry: str) -> str:
  """'genre/genre.00000.wav' from any path or bare file name in a split list."""
  name = pathlib.PurePosixPath(entry.strip().replace("\\", "/")).name
  return f"{name.split('.')[0]}/{name}"


def gtzan(root: pathlib.Path, split_lists: dict[str, str]) -> Listing:
  """GTZAN: `genres/<genre>/<genre>.NNNNN.wav` (or the genre folders directly under `root`).

  Labels are the sorted genre folder names. `split_lists` maps split names to files listing
  clips (paths or names, one per line), such as the fault-filtered split; clips in no list are
  left out and counted. Without lists, every clip goes to the `test` split (zero-shot use).
  """
  base = root / "genres" if (root / "genres").is_dir() else root
  genres = sorted(d.name for d in base.iterdir() if d.is_dir())
  if not genres:
    raise UserError(f"no genre folders in {base}: --source=gtzan expects genres/<genre>/<genre>.NNNNN.wav")
  found = {
    f"{g}/{p.name}": p for g in genres for p in sorted((base / g).iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES
  }

  def item(key: str) -> AudioItem:
    genre = key.split("/")[0]
    return AudioItem(
      id=key, path=str(found.get(key, base / key)), tags=(genre,), label=genres.index(genre) if genre in genres else -1
    )

  if not split_lists:
    return Listing({"test": [item(k) for k in found]}, {"label_names": genres}, require_captions=False)
  splits = {}
  for name, list_file in split_lists.items():
    path = pathlib.Path(list_file)
    if not path.is_file():
      raise UserError(f"split list {path} for split '{name}' not found")
    splits[name] = [item(_gtzan_key(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  listed = {i.id for items in splits.values() for i in items}
  extra = {"label_names": genres, "left_out_by_split_lists": len(set(found) - listed)}
  return Listing(splits, extra, require_captions=False)
