"""What a source lists, and the helpers dataset modules share to list it.

Listing is cheap and done in the parent; decoding and the log-mel run in the writer's worker
processes (`mclap.prepare.decode`). Items that cannot become records (missing or broken files,
empty captions, duplicate ids) are listed anyway and rejected on the way, so `rejects.jsonl`
accounts for every input.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from mclap import paths
from mclap.data import audio
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


@dataclasses.dataclass(frozen=True)
class FileRoot:
  """The folder a source's listed paths are relative to, and the flag that names it (with any
  other flag a user must add when they move it: `--metadata` when it was found in that folder)."""

  folder: pathlib.Path
  flag: str
  keep: str = ""


@dataclasses.dataclass
class Listing:
  """What a source lists: items per split, extra `dataset_info.json` fields, whether every record
  needs a caption (caption corpora) or not (tagging and classification sets), and where the
  listed files are looked for."""

  splits: dict[str, list[AudioItem]]
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  require_captions: bool = True
  file_root: FileRoot | None = None


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset `prepare` reads: what it expects under `--input` (named when it finds nothing),
  the `prepare` options it takes, and `list_items(root, **options) -> Listing`."""

  name: str
  layout: str
  options: tuple[str, ...]
  list_items: Callable[..., Listing]


def nonempty(splits: dict[str, list[AudioItem]]) -> dict[str, list[AudioItem]]:
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


def split_tags(value: Any) -> tuple[str, ...]:
  if isinstance(value, list):
    return tuple(str(t).strip() for t in value if str(t).strip())
  return tuple(t.strip() for t in str(value or "").replace(";", ",").split(",") if t.strip())


def caption_texts(value: Any) -> tuple[str, ...]:
  values = value if isinstance(value, list) else [value]
  return tuple(str(v).strip() for v in values if v is not None)


def listed_tags(value: Any) -> tuple[str, ...]:
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
  return split_tags(text)


def truthy(value: Any) -> bool:
  return str(value).strip().lower() in ("true", "1", "yes")


def find_audio_root(root: pathlib.Path, audio_dir: str, names: tuple[str, ...] = ("audio",)) -> pathlib.Path:
  """`--audio_dir` if given, else the first of `root/<name>` that exists, else `root`."""
  if audio_dir:
    path = pathlib.Path(audio_dir)
    if not path.is_dir():
      raise UserError(f"--audio_dir {path} is not a directory")
    return path
  return next((root / n for n in names if (root / n).is_dir()), root)


def find_audio(audio_root: pathlib.Path, rel: str, variants: tuple[str, ...] = ()) -> str:
  """`audio_root/rel`, or the first existing variant of it with an infix before the suffix (the
  datasets' own downloads: `1234.2min.mp3` for `1234.mp3`, `214.low.mp3`). A path that exists in
  no form is returned as is and rejected as a missing file."""
  path = audio_root / rel
  if not path.is_file():
    candidates = (path.with_name(f"{path.stem}{infix}{path.suffix}") for infix in variants)
    path = next((c for c in candidates if c.is_file()), path)
  return str(path)


def read_converted(listing: Listing) -> Listing:
  """`listing` with every file of a format `prepare` does not decode (`x.m4a`) swapped for one
  converted beside it (`x.flac`, or another decodable suffix), which its rejection tells users to
  make: the re-run after converting reads them with the metadata unedited, and redoes their
  shards (their items changed)."""

  def converted(item: AudioItem) -> AudioItem:
    path = pathlib.Path(item.path)
    if not item.path or path.suffix.lower() not in audio.OTHER_AUDIO_SUFFIXES:
      return item
    found = next((c for s in audio.AUDIO_SUFFIXES if (c := path.with_suffix(s)).is_file()), None)
    return dataclasses.replace(item, path=str(found)) if found else item

  return dataclasses.replace(listing, splits={k: [converted(i) for i in v] for k, v in listing.splits.items()})


def check_files_exist(file_root: FileRoot | None, items: list[Any], sample: int = 20) -> None:
  """Stops a job none of whose first `sample` files (of `items` still to do) exists before it
  decodes anything: the folder is one level off, or the metadata names paths from another root.
  Names the folder where they are when it is one level off `file_root`."""
  listed = [pathlib.Path(i.path) for i in items if getattr(i, "path", "")][:sample]
  if not listed or any(p.is_file() for p in listed):
    return
  if file_root is None:
    raise UserError(f"none of the first {len(listed)} listed files exists (e.g. {listed[0]}): check --input")
  message = f"none of the first {len(listed)} listed files exists under {file_root.folder} (e.g. {listed[0]})"
  rels = [p.relative_to(file_root.folder) for p in listed[:3] if p.is_relative_to(file_root.folder)]
  found = paths.near(file_root.folder, lambda folder: any((folder / r).is_file() for r in rels)) if rels else []
  if not found:
    raise UserError(f"{message}; the listed paths are relative to it: check {file_root.flag}")
  keep = f" {file_root.keep}" if file_root.keep else ""
  raise UserError(f"{message}; they are under {found[0]}: pass {file_root.flag} {found[0]}{keep}")


def metadata_file(
  root: pathlib.Path,
  metadata: str,
  default: str | tuple[str, ...],
  source: str,
  columns: str,
  folders: tuple[str, ...] = (),
) -> pathlib.Path:
  """`--metadata` if given, else the first of the `default` name(s) in `root` or in one of its
  `folders` (other layouts of the same download)."""
  names = (default,) if isinstance(default, str) else default
  found_in = lambda folder: [folder / f / n for f in ("", *folders) for n in names]  # noqa: E731
  candidates = [pathlib.Path(metadata)] if metadata else found_in(root)
  if path := next((p for p in candidates if p.is_file()), None):
    return path
  message = (
    f"{' or '.join(map(str, candidates))} not found: --source={source} needs {' or '.join(names)} ({columns}) "
    "in --input"
  )
  if not metadata and (near := paths.near(root, lambda p: any(c.is_file() for c in found_in(p)))):
    raise UserError(f"{message}; did you mean --input {near[0]}?")
  raise UserError(f"{message}, or --metadata FILE")


def require_columns(path: pathlib.Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
  if missing := [c for c in columns if rows and c not in rows[0]]:
    raise UserError(f"{path} lacks column(s) {missing} (columns: {sorted(rows[0])})")


def list_entries(list_file: str, split: str) -> list[str]:
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


def metadata_rows(path: pathlib.Path, delimiter: str = "") -> list[dict[str, Any]]:
  """Rows of a CSV/TSV with a header, of a JSONL file, or of a JSON list of objects (a byte-order
  mark is ignored). Without a `delimiter`, a CSV's is the one of `,`, `;` (spreadsheets of
  locales that write decimal commas) and tab that splits its header most."""
  text = read_text(path)
  if path.suffix.lower() == ".json":
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON ({e})") from e
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
      raise UserError(f"{path} holds a JSON {type(rows).__name__}; write a list of objects, one per row")
    return rows
  if path.suffix.lower() == ".jsonl":
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise UserError(f"{path} line {n} is not valid JSON ({e})") from e
    return rows
  header = text.partition("\n")[0]
  delimiter = delimiter or max(",;\t", key=header.count)
  return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def read_text(path: pathlib.Path) -> str:
  """A metadata file's text; bytes that are not UTF-8 become lone surrogates, so that one bad
  caption rejects its own record (`caption not UTF-8`) rather than the whole file."""
  return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
