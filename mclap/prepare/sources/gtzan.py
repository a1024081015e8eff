"""GTZAN (Tzanetakis & Cook, 2002): 1,000 30-second clips in 10 genres."""

from __future__ import annotations

import pathlib

from mclap import paths
from mclap.data import audio
from mclap.errors import UserError
from mclap.prepare.listing import AudioItem, Listing, Source, list_entries


def _gtzan_key(entry: str) -> str:
  """'genre/genre.00000.wav' from any path or bare file name in a split list."""
  name = pathlib.PurePosixPath(entry.strip().replace("\\", "/")).name
  return f"{name.split('.')[0]}/{name}"


GTZAN_FOLDERS = ("genres", "genres_original")  # The original archive's, and the Kaggle copy's (in Data/).


def list_items(root: pathlib.Path, *, split_lists: dict[str, str]) -> Listing:
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
    deeper = paths.near(root, lambda p: any((p / name).is_dir() for name in GTZAN_FOLDERS))
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
  splits = {name: [item(_gtzan_key(e)) for e in list_entries(file, name)] for name, file in split_lists.items()}
  listed = {i.id for items in splits.values() for i in items}
  extra = {"label_names": genres, "left_out_by_split_lists": len(set(found) - listed)}
  return Listing(splits, extra, require_captions=False)


SOURCE = Source(
  name="gtzan",
  layout="genres/<genre>/<genre>.NNNNN.wav (or the genre folders directly)",
  options=("split_lists",),
  list_items=list_items,
)
