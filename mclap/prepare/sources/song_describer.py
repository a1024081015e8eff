"""The Song Describer Dataset (Manco et al., 2023): captions of MTG-Jamendo tracks."""

from __future__ import annotations

import pathlib
from typing import Any

from mclap.errors import UserError
from mclap.prepare.listing import (
  AudioItem,
  FileRoot,
  Listing,
  Source,
  caption_texts,
  find_audio,
  find_audio_root,
  listed_tags,
  metadata_file,
  metadata_rows,
  require_columns,
  truthy,
)
from mclap.prepare.sources.mtg_jamendo import tag_text

MTG_CATEGORIES = {"genre": "genre", "instrument": "instrument", "mood/theme": "moodtheme"}


def list_items(root: pathlib.Path, *, subset: str = "", metadata: str = "", audio_dir: str = "") -> Listing:
  """Song Describer: `song_describer.csv` (a row per caption: caption_id, track_id, caption,
  is_valid_subset, path, genre/instrument/mood/theme lists) and the `audio/` folder.

  Every caption of a track goes into that track's one record. The dataset is for evaluation only,
  so everything is `test`; `--subset=valid` keeps the validated captions only.
  """
  if subset not in ("", "all", "valid"):
    raise UserError(f"--subset={subset} for song_describer; use all or valid")
  path = metadata_file(root, metadata, "song_describer.csv", "song_describer", "track_id, caption, path")
  rows = metadata_rows(path)
  require_columns(path, rows, ("track_id", "caption", "path"))
  audio_root = find_audio_root(root, audio_dir)
  tracks: dict[str, dict[str, Any]] = {}
  left_out = 0
  for row in rows:
    if subset == "valid" and not truthy(row.get("is_valid_subset")):
      left_out += 1
      continue
    track = tracks.setdefault(row["track_id"].strip(), {"path": row["path"], "captions": [], "tags": {}})
    track["captions"].extend(caption_texts(row["caption"]))
    for column in MTG_CATEGORIES:
      track["tags"].update(dict.fromkeys(f"{column}---{t}" for t in listed_tags(row.get(column))))
  items = [
    AudioItem(
      id=track_id,
      path=find_audio(audio_root, t["path"], (".2min",)),
      captions=tuple(t["captions"]),
      tags=tuple(t["tags"]),
    )
    for track_id, t in tracks.items()
  ]
  extra = {"tag_text": tag_text(t for i in items for t in i.tags), "left_out_not_in_subset": left_out}
  return Listing({"test": items}, extra, file_root=FileRoot(audio_root, "--audio_dir"))


SOURCE = Source(
  name="song_describer",
  layout="song_describer.csv and the audio/ folder",
  options=("subset", "metadata", "audio_dir"),
  list_items=list_items,
)
