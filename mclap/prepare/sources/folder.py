"""A folder of audio files with a metadata table of captions (your own data)."""

from __future__ import annotations

import pathlib

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
  """A folder of audio files plus a CSV or JSONL with `path, caption[, tags][, split]`.

  Paths are relative to `root`; tags are a list or a comma/semicolon-separated string; rows
  without a split are assigned one by a seeded hash of the path.
  """
  return list_files(root, seed=seed, metadata=metadata, source="folder")


def list_files(root: pathlib.Path, *, seed: int, metadata: str, source: str) -> Listing:
  """`list_items` for any source whose files a metadata table names so (`features`: feature
  files), named `source` in errors."""
  path = metadata_file(root, metadata, ("metadata.csv", "metadata.jsonl"), source, "path, caption[, tags][, split]")
  rows = metadata_rows(path)
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
        id=rel, path=str(root / rel), captions=caption_texts(row.get("caption", "")), tags=split_tags(row.get("tags"))
      )
    )
  keep = "" if metadata else f"--metadata {path}"  # Moving --input loses a metadata file found in it.
  return Listing(nonempty(splits), file_root=FileRoot(root, "--input", keep))


SOURCE = Source(
  name="folder",
  layout="metadata.csv or metadata.jsonl with path, caption[, tags][, split] columns",
  options=("seed", "metadata"),
  list_items=list_items,
)
