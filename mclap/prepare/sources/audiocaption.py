"""MusCALL's own layout of (audio, caption) datasets."""

from __future__ import annotations

import json
import pathlib

from mclap.errors import UserError
from mclap.prepare.listing import AudioItem, FileRoot, Listing, Source, caption_texts, find_audio_root, read_text


def list_items(root: pathlib.Path, *, audio_dir: str = "") -> Listing:
  """MusCALL's layout: `dataset_{train,val,test}.json` lists of {audio_id, caption, audio_path},
  with `audio_path` relative to `root/audio/` (or `audio_dir`)."""
  audio_root = find_audio_root(root, audio_dir)
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
          path=str(audio_root / entry["audio_path"]),
          captions=caption_texts(entry.get("caption", "")),
        )
      )
    splits[name] = items
  return Listing(splits, file_root=FileRoot(audio_root, "--audio_dir"))


SOURCE = Source(
  name="audiocaption",
  layout="dataset_train/val/test.json listing files under audio/",
  options=("audio_dir",),
  list_items=list_items,
)
