"""A folder of audio files with a metadata table of captions (your own data)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from mclap.errors import UserError
from mclap.prepare.listing import (
  SPLIT_FRACTIONS,
  AudioItem,
  FileRoot,
  Listing,
  Source,
  caption_texts,
  hashed_split,
  metadata_file,
  metadata_rows,
  nonempty,
  split_tags,
)


def list_items(root: pathlib.Path, *, seed: int, metadata: str = "") -> Listing:
  """A folder of audio files plus a CSV, JSONL or JSON table with `path, caption[, tags][, split]`.

  Paths are relative to `root`; tags are a list or a comma/semicolon-separated string; rows of
  one path are one clip with all their captions; rows without a split are assigned one by a
  seeded hash of the path.
  """
  return list_files(root, seed=seed, metadata=metadata, source="folder")


def list_files(root: pathlib.Path, *, seed: int, metadata: str, source: str) -> Listing:
  """`list_items` for any source whose files a metadata table names so (`features`: feature
  files), named `source` in errors."""
  path = metadata_file(
    root, metadata, ("metadata.csv", "metadata.jsonl", "metadata.json"), source, "path, caption[, tags][, split]"
  )
  rows = metadata_rows(path)
  for column in ("path", "caption"):  # Named by no row: the file names it otherwise ("description").
    if rows and not any(column in row for row in rows):
      raise UserError(f"{path} has no '{column}' column (columns: {sorted(map(str, rows[0]))}); name it {column}")
  splits = {name: [] for name, _ in SPLIT_FRACTIONS}
  clips: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # Rows by path: one clip's captions may take a row each.
  for n, row in enumerate(rows, 1):
    if rel := _posix(row.get("path")):
      clips.setdefault(rel, []).append((n, row))
    else:
      splits["train"].append(AudioItem(id=f"{path.name}#{n}", path="", bad_metadata=f"{path.name} row {n} has no path"))
  for rel, clip_rows in clips.items():
    named = {n: split for n, row in clip_rows if (split := str(row.get("split") or "").strip())}
    if bad := next((s for s in named.values() if s not in splits), None):
      raise UserError(f"{path}: row for '{rel}' has split '{bad}'; use train, validation or test")
    captions = [c for _, row in clip_rows for c in caption_texts(row.get("caption", ""))]
    item = AudioItem(
      id=rel,
      path=str(root / rel),
      captions=tuple(c for c in captions if c) or tuple(captions),
      tags=tuple(dict.fromkeys(t for _, row in clip_rows for t in split_tags(row.get("tags")))),
    )
    if len(set(named.values())) > 1:
      where = ", ".join(f"row {n} {s}" for n, s in named.items())
      item = dataclasses.replace(item, bad_metadata=f"{path.name} puts '{rel}' in different splits ({where})")
    splits[next(iter(named.values()), None) or hashed_split(rel, seed)].append(item)
  keep = "" if metadata else f"--metadata {path}"  # Moving --input loses a metadata file found in it.
  return Listing(nonempty(splits), file_root=FileRoot(root, "--input", keep))


def _posix(value: Any) -> str:
  """A metadata path as the folder's files are named: written on Windows (`jazz\\take1.flac`) or
  as `./take1.flac`, it names the same file, and so the same clip."""
  text = str(value or "").strip().replace("\\", "/")
  return str(pathlib.PurePosixPath(text)) if text else ""


SOURCE = Source(
  name="folder",
  layout="metadata.csv, .jsonl or .json with path, caption[, tags][, split] columns",
  options=("seed", "metadata"),
  list_items=list_items,
)
