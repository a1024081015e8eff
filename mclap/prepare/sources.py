"""Sources of real audio: each lists `AudioItem`s per split; `decode_record` turns one into a record.

Listing is cheap and done in the parent; decoding and the log-mel run in the writer's worker
processes. Items that cannot become records (missing or broken files, empty captions, duplicate
ids) are listed anyway and rejected on the way, so `rejects.jsonl` accounts for every input.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import hashlib
import io
import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from mclap.data import audio, pipeline
from mclap.data import mel as mel_lib
from mclap.data.records import Reject
from mclap.errors import UserError

SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))


@dataclasses.dataclass(frozen=True)
class AudioItem:
  id: str
  path: str
  captions: tuple[str, ...] = ()
  tags: tuple[str, ...] = ()
  label: int = -1
  segment: tuple[float, float] | None = None  # (start, end) seconds inside a longer recording.
  bad_metadata: str = ""  # Why the metadata entry cannot become a record (it is listed to be rejected).


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


def _nonempty(splits: dict[str, list[AudioItem]]) -> dict[str, list[AudioItem]]:
  """The splits that rows went to: hashing a small corpus may leave one without any."""
  return {name: items for name, items in splits.items() if items}


def hashed_split(item_id: str, seed: int, fractions: tuple[tuple[str, float], ...] = SPLIT_FRACTIONS) -> str:
  """A split by a seeded hash of the id (80/10/10 train/validation/test by default): stable as
  the corpus grows, and the same for every caption of one recording."""
  bucket = int(hashlib.sha1(f"{seed}:{item_id}".encode()).hexdigest(), 16) % 1000 / 1000
  total = 0.0
  for name, fraction in fractions:
    total += fraction
    if bucket < total:
      return name
  return fractions[-1][0]


def _split_tags(value: Any) -> tuple[str, ...]:
  if isinstance(value, list):
    return tuple(str(t).strip() for t in value if str(t).strip())
  return tuple(t.strip() for t in str(value or "").replace(";", ",").split(",") if t.strip())


def _captions(value: Any) -> tuple[str, ...]:
  values = value if isinstance(value, list) else [value]
  return tuple(str(v).strip() for v in values if v is not None)


def _listed_tags(value: Any) -> tuple[str, ...]:
  """Tags written as a Python/JSON list literal ("['rock', 'pop']", MusicCaps and Song Describer),
  a bracketed list without quotes, or a comma-separated string."""
  text = str(value or "").strip()
  if text.startswith("[") and text.endswith("]"):
    try:
      parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      parsed = [t.strip().strip("'\"") for t in text[1:-1].split(",")]
    if isinstance(parsed, list):
      return tuple(str(t).strip() for t in parsed if str(t).strip())
  return _split_tags(text)


def _truthy(value: Any) -> bool:
  return str(value).strip().lower() in ("true", "1", "yes")


def _audio_root(root: pathlib.Path, audio_dir: str, names: tuple[str, ...] = ("audio",)) -> pathlib.Path:
  """`--audio_dir` if given, else the first of `root/<name>` that exists, else `root`."""
  if audio_dir:
    path = pathlib.Path(audio_dir)
    if not path.is_dir():
      raise UserError(f"--audio_dir {path} is not a directory")
    return path
  return next((root / n for n in names if (root / n).is_dir()), root)


def _find_audio(audio_root: pathlib.Path, rel: str, variants: tuple[str, ...] = ()) -> str:
  """`audio_root/rel`, or the first existing variant of it with an infix before the suffix (the
  datasets' own downloads: `1234.2min.mp3` for `1234.mp3`, `214.low.mp3`). A path that exists in
  no form is returned as is and rejected as a missing file."""
  path = audio_root / rel
  if not path.is_file():
    candidates = (path.with_name(f"{path.stem}{infix}{path.suffix}") for infix in variants)
    path = next((c for c in candidates if c.is_file()), path)
  return str(path)


def _index_by_ytid(audio_root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every audio file under `audio_root` by its name without suffix, and by the 11-character
  YouTube id it starts with (downloaders also write `<ytid>_30000_40000.wav`, `[<ytid>]-....wav`)."""
  index = {}
  for p in sorted(audio_root.rglob("*")):
    if p.suffix.lower() in audio.AUDIO_SUFFIXES:
      index.setdefault(p.stem.lstrip("[")[:11], p)
      index[p.stem] = p
  return index


def _metadata_file(
  root: pathlib.Path, metadata: str, default: str, source: str, columns: str, folders: tuple[str, ...] = ()
) -> pathlib.Path:
  """`--metadata` if given, else `default` in `root` or in one of its `folders` (other layouts of
  the same download)."""
  candidates = [pathlib.Path(metadata)] if metadata else [root / default, *(root / f / default for f in folders)]
  if path := next((p for p in candidates if p.is_file()), None):
    return path
  raise UserError(
    f"{' or '.join(map(str, candidates))} not found: --source={source} needs {default} ({columns}) in --input, "
    "or --metadata FILE"
  )


def _require_columns(path: pathlib.Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
  if missing := [c for c in columns if rows and c not in rows[0]]:
    raise UserError(f"{path} lacks column(s) {missing} (columns: {sorted(rows[0])})")


def _list_entries(list_file: str, split: str) -> list[str]:
  """A split list: one entry per line of a text file, or a NumPy array of strings (`.npy`)."""
  path = pathlib.Path(list_file)
  if not path.is_file():
    raise UserError(f"split list {path} for split '{split}' not found")
  if path.suffix == ".npy":
    try:
      return [str(x) for x in np.load(path, allow_pickle=False).reshape(-1)]
    except ValueError as e:
      raise UserError(f"split list {path} is not a NumPy array of strings ({e}); write one entry per line") from e
  return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
      entries = json.loads(read_text(path))
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(entries, list):
      raise UserError(f"{path} holds a JSON {type(entries).__name__}; MusCALL's layout is a list of entries")
    items = []
    for i, entry in enumerate(entries):
      if not isinstance(entry, dict) or "audio_path" not in entry:
        what = "has no 'audio_path'" if isinstance(entry, dict) else "is not an object"
        problem = f"{file} entry {i} {what}"
        items.append(AudioItem(id=f"{file}#{i}", path="", bad_metadata=problem))
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


def _metadata_rows(path: pathlib.Path, delimiter: str = ",") -> list[dict[str, Any]]:
  """Rows of a CSV/TSV with a header, or of a JSONL file (a byte-order mark is ignored)."""
  if path.suffix.lower() == ".jsonl":
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise UserError(f"{path} line {n} is not valid JSON ({e})") from e
    return rows
  return list(csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter))


def read_text(path: pathlib.Path) -> str:
  """A metadata file's text; bytes that are not UTF-8 become lone surrogates, so that one bad
  caption rejects its own record (`caption not UTF-8`) rather than the whole file."""
  return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


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
  for n, row in enumerate(rows, 1):
    rel = str(row.get("path") or "")
    if not rel:
      splits["train"].append(AudioItem(id=f"{path.name}#{n}", path="", bad_metadata=f"{path.name} row {n} has no path"))
      continue
    split = (row.get("split") or "").strip() or hashed_split(rel, seed)
    if split not in splits:
      raise UserError(f"{path}: row for '{rel}' has split '{split}'; use train, validation or test")
    splits[split].append(
      AudioItem(
        id=rel, path=str(root / rel), captions=_captions(row.get("caption", "")), tags=_split_tags(row.get("tags"))
      )
    )
  return Listing(_nonempty(splits))


def _gtzan_key(entry: str) -> str:
  """'genre/genre.00000.wav' from any path or bare file name in a split list."""
  name = pathlib.PurePosixPath(entry.strip().replace("\\", "/")).name
  return f"{name.split('.')[0]}/{name}"


GTZAN_FOLDERS = ("genres", "genres_original")  # The original archive's, and the Kaggle copy's (in Data/).


def gtzan(root: pathlib.Path, split_lists: dict[str, str]) -> Listing:
  """GTZAN: `genres/<genre>/<genre>.NNNNN.wav` (or `genres_original/...`, or the genre folders
  directly under `root`).

  Labels are the sorted genre folder names. `split_lists` maps split names to files listing
  clips (paths or names, one per line), such as the fault-filtered split; clips in no list are
  left out and counted. Without lists, every clip goes to the `test` split (zero-shot use).
  """
  base = next((root / name for name in GTZAN_FOLDERS if (root / name).is_dir()), root)
  genres = sorted(d.name for d in base.iterdir() if d.is_dir())
  if not genres:
    raise UserError(f"no genre folders in {base}: --source=gtzan expects genres/<genre>/<genre>.NNNNN.wav")
  found = {
    f"{g}/{p.name}": p for g in genres for p in sorted((base / g).iterdir()) if p.suffix.lower() in audio.AUDIO_SUFFIXES
  }
  if not found:
    deeper = sorted(str(p.parent) for name in GTZAN_FOLDERS for p in base.glob(f"*/{name}") if p.is_dir())
    hint = f"; did you mean --input {deeper[0]}?" if deeper else ""
    raise UserError(
      f"no audio files in the genre folders of {base} ({', '.join(genres[:5])}{', ...' if len(genres) > 5 else ''}): "
      f"--source=gtzan expects genres/<genre>/<genre>.NNNNN.wav{hint}"
    )

  def item(key: str) -> AudioItem:
    genre = key.split("/")[0]
    return AudioItem(
      id=key, path=str(found.get(key, base / key)), tags=(genre,), label=genres.index(genre) if genre in genres else -1
    )

  if not split_lists:
    return Listing({"test": [item(k) for k in found]}, {"label_names": genres}, require_captions=False)
  splits = {name: [item(_gtzan_key(e)) for e in _list_entries(file, name)] for name, file in split_lists.items()}
  listed = {i.id for items in splits.values() for i in items}
  extra = {"label_names": genres, "left_out_by_split_lists": len(set(found) - listed)}
  return Listing(splits, extra, require_captions=False)


def musiccaps(root: pathlib.Path, seed: int, metadata: str = "", audio_dir: str = "") -> Listing:
  """MusicCaps: `musiccaps-public.csv` (ytid, start_s, end_s, caption, aspect_list,
  is_audioset_eval) and audio files named by ytid (`<ytid>.<ext>`, or starting with the ytid)
  anywhere under the audio folder.

  A file may be the whole recording (it reaches end_s: the [start_s, end_s) clip is cut out) or
  the clip itself (as long as the clip); a file of any other length could be either and is
  rejected as "ambiguous length" (see `audio.load_audio`).
  The AudioSet evaluation clips form `test`; the rest splits 90/10 into train/validation by a
  seeded hash of the ytid. Aspects become tags.
  """
  path = _metadata_file(root, metadata, "musiccaps-public.csv", "musiccaps", "ytid, start_s, end_s, caption")
  rows = _metadata_rows(path)
  _require_columns(path, rows, ("ytid", "start_s", "end_s", "caption"))
  audio_root = _audio_root(root, audio_dir)
  files = _index_by_ytid(audio_root)
  splits = {name: [] for name, _ in SPLIT_FRACTIONS}
  for n, row in enumerate(rows, 2):
    ytid = row["ytid"].strip()
    try:
      segment = (float(row["start_s"]), float(row["end_s"]))
    except ValueError as e:
      raise UserError(f"{path} line {n} ({ytid}): start_s/end_s are not numbers ({e})") from e
    if "is_audioset_eval" in row:
      split = (
        "test" if _truthy(row["is_audioset_eval"]) else hashed_split(ytid, seed, (("train", 0.9), ("validation", 0.1)))
      )
    else:
      split = hashed_split(ytid, seed)
    splits[split].append(
      AudioItem(
        id=ytid,
        path=str(files.get(ytid, audio_root / f"{ytid}.wav")),
        captions=_captions(row["caption"]),
        tags=_listed_tags(row.get("aspect_list")),
        segment=segment,
      )
    )
  return Listing(_nonempty(splits))


MTG_CATEGORIES = {"genre": "genre", "instrument": "instrument", "mood/theme": "moodtheme"}


def song_describer(root: pathlib.Path, subset: str = "", metadata: str = "", audio_dir: str = "") -> Listing:
  """Song Describer: `song_describer.csv` (a row per caption: caption_id, track_id, caption,
  is_valid_subset, path, genre/instrument/mood/theme lists) and the `audio/` folder.

  Every caption of a track goes into that track's one record. The dataset is for evaluation only,
  so everything is `test`; `--subset=valid` keeps the validated captions only.
  """
  if subset not in ("", "all", "valid"):
    raise UserError(f"--subset={subset} for song_describer; use all or valid")
  path = _metadata_file(root, metadata, "song_describer.csv", "song_describer", "track_id, caption, path")
  rows = _metadata_rows(path)
  _require_columns(path, rows, ("track_id", "caption", "path"))
  audio_root = _audio_root(root, audio_dir)
  tracks: dict[str, dict[str, Any]] = {}
  left_out = 0
  for row in rows:
    if subset == "valid" and not _truthy(row.get("is_valid_subset")):
      left_out += 1
      continue
    track = tracks.setdefault(row["track_id"].strip(), {"path": row["path"], "captions": [], "tags": {}})
    track["captions"].extend(_captions(row["caption"]))
    for column in MTG_CATEGORIES:
      track["tags"].update(dict.fromkeys(f"{column}---{t}" for t in _listed_tags(row.get(column))))
  items = [
    AudioItem(
      id=track_id,
      path=_find_audio(audio_root, t["path"], (".2min",)),
      captions=tuple(t["captions"]),
      tags=tuple(t["tags"]),
    )
    for track_id, t in tracks.items()
  ]
  extra = {"tag_text": _mtg_tag_text(t for i in items for t in i.tags), "left_out_not_in_subset": left_out}
  return Listing({"test": items}, extra)


def _mtg_tag_text(tags) -> dict[str, str]:
  """'genre---rock' -> 'rock': the words a prompt should use for an MTG-Jamendo style tag."""
  return {t: t.split("---", 1)[-1] for t in sorted(set(tags))}


MTAT_LIST_SPLIT = {**dict.fromkeys("0123456789ab", "train"), "c": "validation", **dict.fromkeys("def", "test")}


def mtat(
  root: pathlib.Path, split_lists: dict[str, str], subset: str = "", audio_dir: str = "", metadata: str = ""
) -> Listing:
  """MagnaTagATune: `annotations_final.csv` (tab-separated clip_id, 188 binary tag columns,
  mp3_path) and the audio folders `0`...`f`.

  Tags are the 50 most frequent (`--subset=top50`, the default) or all 188 (`--subset=all`).
  `split_lists` (entries: clip paths, or clip ids) give the common top-50 split; without them the
  folder split is used (0-b train, c validation, d-f test) and clips with none of the tags are
  left out and counted.
  """
  if subset not in ("", "top50", "all"):
    raise UserError(f"--subset={subset} for mtat; use top50 or all")
  path = _metadata_file(root, metadata, "annotations_final.csv", "mtat", "tab-separated clip_id, tags..., mp3_path")
  rows = _metadata_rows(path, delimiter="\t")
  _require_columns(path, rows, ("clip_id", "mp3_path"))
  names = [c for c in rows[0] if c not in ("clip_id", "mp3_path")] if rows else []
  counts = {t: sum(r[t].strip() == "1" for r in rows) for t in names}
  ranked = sorted(names, key=lambda t: (-counts[t], t))
  vocab = sorted(ranked[:50] if subset in ("", "top50") else ranked)
  audio_root = _audio_root(root, audio_dir, ("audio", "mp3"))

  def item(row: dict[str, str]) -> AudioItem:
    rel = row["mp3_path"].strip()
    return AudioItem(id=rel, path=str(audio_root / rel), tags=tuple(t for t in vocab if row[t].strip() == "1"))

  extra: dict[str, Any] = {"tags": vocab, "subset": subset or "top50"}
  if split_lists:
    by_key = {k: r for r in rows for k in (r["mp3_path"].strip(), r["clip_id"].strip())}
    splits = {}
    for name, file in split_lists.items():
      entries = [_mtat_key(e) for e in _list_entries(file, name)]
      splits[name] = [item(by_key[k]) if k in by_key else AudioItem(id=k, path=str(audio_root / k)) for k in entries]
    return Listing(splits, extra, require_captions=False)
  splits = {"train": [], "validation": [], "test": []}
  untagged = 0
  for row in rows:
    clip = item(row)
    if not clip.tags:
      untagged += 1
      continue
    splits[MTAT_LIST_SPLIT.get(clip.id[:1], "train")].append(clip)
  extra["left_out_without_tags"] = untagged
  return Listing(splits, extra, require_captions=False)


def _mtat_key(entry: str) -> str:
  """The clip path of a split-list entry such as "12\tf/some-clip-30-59.mp3", else the entry
  itself (a clip id)."""
  fields = [f.strip() for f in entry.replace(",", "\t").split("\t") if f.strip()]
  return next((f for f in fields if f.lower().endswith(audio.AUDIO_SUFFIXES)), fields[0] if fields else entry)


MTG_SUBSETS = {
  "genre": "autotagging_genre",
  "moodtheme": "autotagging_moodtheme",
  "instrument": "autotagging_instrument",
  "top50": "autotagging_top50tags",
  "all": "autotagging",
}


def mtg_jamendo(root: pathlib.Path, subset: str = "", fold: int | None = None, audio_dir: str = "") -> Listing:
  """MTG-Jamendo: the official `splits/split-N/<subset>-{train,validation,test}.tsv` files (TRACK_ID,
  ARTIST_ID, ALBUM_ID, PATH, DURATION, then one tag per column such as `genre---rock`) and the
  audio folder (`14/214.mp3`, or the low-quality `14/214.low.mp3`).

  `root` may be the dataset repository, its `data/` folder, or `splits/`. Subsets: genre,
  moodtheme, instrument, top50 (default), all; `fold` picks split-N (default 0).
  """
  subset = subset or "top50"
  if subset not in MTG_SUBSETS:
    raise UserError(f"--subset={subset} for mtg_jamendo; use one of {', '.join(MTG_SUBSETS)}")
  fold = 0 if fold is None else fold
  candidates = [root / "data" / "splits", root / "splits", root]
  split_dir = next((c / f"split-{fold}" for c in candidates if (c / f"split-{fold}").is_dir()), None)
  if split_dir is None:
    raise UserError(
      f"no split-{fold} folder in {' or '.join(map(str, candidates))}: --source=mtg_jamendo expects "
      "the dataset's data/splits/split-N/*.tsv"
    )
  audio_root = _audio_root(root, audio_dir)
  splits = {}
  for name in ("train", "validation", "test"):
    tsv = split_dir / f"{MTG_SUBSETS[subset]}-{name}.tsv"
    if not tsv.is_file():
      raise UserError(f"{tsv} not found: split-{fold} has no {name} file for --subset={subset}")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("TRACK_ID"):
      raise UserError(f"{tsv} does not start with the TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS header")
    items = []
    for n, line in enumerate(lines[1:], 2):
      fields = line.rstrip("\n").split("\t")
      if len(fields) < 5:
        raise UserError(
          f"{tsv} line {n} has {len(fields)} fields; expected TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, tags"
        )
      items.append(AudioItem(id=fields[0], path=_find_audio(audio_root, fields[3], (".low",)), tags=tuple(fields[5:])))
    splits[name] = items
  tags = [t for items in splits.values() for i in items for t in i.tags]
  extra = {"tags": sorted(set(tags)), "tag_text": _mtg_tag_text(tags), "subset": subset, "split_number": fold}
  return Listing(splits, extra, require_captions=False)


def tinysol(root: pathlib.Path, fold: int | None = None, audio_dir: str = "", metadata: str = "") -> Listing:
  """TinySOL: `TinySOL_metadata.csv` (Path, Fold, Family, Instrument (in full), ...) and the
  audio folder `TinySOL/` (or `audio/`), as Zenodo's archives unpack; mirdata's download keeps the
  metadata in `annotation/`. Labels are the instruments; tags the instrument and its
  family. Everything is `test` (zero-shot use) unless `fold` is given: then that fold is `test`
  and the other four are `train`.
  """
  path = _metadata_file(
    root, metadata, "TinySOL_metadata.csv", "tinysol", "Path, Fold, Family, Instrument (in full)", ("annotation",)
  )
  rows = _metadata_rows(path)
  instrument_column = next((c for c in ("Instrument (in full)", "Instrument Name") if rows and c in rows[0]), "")
  _require_columns(path, rows, ("Path", "Fold", "Family", instrument_column or "Instrument (in full)"))
  audio_root = _audio_root(root, audio_dir, ("TinySOL", "audio"))
  labels = sorted({r[instrument_column].strip() for r in rows})
  splits: dict[str, list[AudioItem]] = {"train": [], "test": []} if fold is not None else {"test": []}
  for row in rows:
    instrument = row[instrument_column].strip()
    split = "test" if fold is None or row["Fold"].strip() == str(fold) else "train"
    splits[split].append(
      AudioItem(
        id=row["Path"].strip(),
        path=str(audio_root / row["Path"].strip()),
        tags=(instrument, row["Family"].strip()),
        label=labels.index(instrument),
      )
    )
  return Listing(splits, {"label_names": labels}, require_captions=False)
