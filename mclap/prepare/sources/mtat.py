"""MagnaTagATune (Law et al., 2009): 25.9k 29-second clips with 188 tags."""

from __future__ import annotations

import pathlib
from typing import Any

from mclap.data import audio
from mclap.errors import UserError
from mclap.prepare.listing import (
  AudioItem,
  FileRoot,
  Listing,
  Source,
  find_audio_root,
  list_entries,
  metadata_file,
  metadata_rows,
  require_columns,
)

MTAT_LIST_SPLIT = {**dict.fromkeys("0123456789ab", "train"), "c": "validation", **dict.fromkeys("def", "test")}


def list_items(
  root: pathlib.Path, *, split_lists: dict[str, str], subset: str = "", audio_dir: str = "", metadata: str = ""
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
  path = metadata_file(root, metadata, "annotations_final.csv", "mtat", "tab-separated clip_id, tags..., mp3_path")
  rows = metadata_rows(path, delimiter="\t")
  require_columns(path, rows, ("clip_id", "mp3_path"))
  names = [c for c in rows[0] if c not in ("clip_id", "mp3_path")] if rows else []
  counts = {t: sum(r[t].strip() == "1" for r in rows) for t in names}
  ranked = sorted(names, key=lambda t: (-counts[t], t))
  vocab = sorted(ranked[:50] if subset in ("", "top50") else ranked)
  audio_root = find_audio_root(root, audio_dir, ("audio", "mp3"))

  def item(row: dict[str, str]) -> AudioItem:
    rel = row["mp3_path"].strip()
    return AudioItem(id=rel, path=str(audio_root / rel), tags=tuple(t for t in vocab if row[t].strip() == "1"))

  extra: dict[str, Any] = {"tags": vocab, "subset": subset or "top50"}
  if split_lists:
    by_key = {k: r for r in rows for k in (r["mp3_path"].strip(), r["clip_id"].strip())}
    splits = {}
    for name, file in split_lists.items():
      entries = [_mtat_key(e) for e in list_entries(file, name)]
      splits[name] = [item(by_key[k]) if k in by_key else AudioItem(id=k, path=str(audio_root / k)) for k in entries]
    return Listing(splits, extra, require_captions=False, file_root=FileRoot(audio_root, "--audio_dir"))
  splits = {"train": [], "validation": [], "test": []}
  untagged = 0
  for row in rows:
    clip = item(row)
    if not clip.tags:
      untagged += 1
      continue
    splits[MTAT_LIST_SPLIT.get(clip.id[:1], "train")].append(clip)
  extra["left_out_without_tags"] = untagged
  return Listing(splits, extra, require_captions=False, file_root=FileRoot(audio_root, "--audio_dir"))


def _mtat_key(entry: str) -> str:
  """The clip path of a split-list entry such as "12\tf/some-clip-30-59.mp3", else the entry
  itself (a clip id)."""
  fields = [f.strip() for f in entry.replace(",", "\t").split("\t") if f.strip()]
  return next((f for f in fields if f.lower().endswith(audio.AUDIO_SUFFIXES)), fields[0] if fields else entry)


SOURCE = Source(
  name="mtat",
  layout="annotations_final.csv and the audio folders 0 ... f",
  options=("split_lists", "subset", "audio_dir", "metadata"),
  list_items=list_items,
)
