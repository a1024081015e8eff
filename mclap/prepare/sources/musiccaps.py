"""MusicCaps (Agostinelli et al., 2023): 5.5k ten-second clips of AudioSet with captions."""

from __future__ import annotations

import pathlib

from mclap.data import audio
from mclap.errors import UserError
from mclap.prepare.listing import (
  SPLIT_FRACTIONS,
  AudioItem,
  FileRoot,
  Listing,
  Source,
  caption_texts,
  find_audio_root,
  hashed_split,
  listed_tags,
  metadata_file,
  metadata_rows,
  nonempty,
  require_columns,
  truthy,
)


def _index_by_ytid(audio_root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every audio file under `audio_root` by its name without suffix, and by the 11-character
  YouTube id it starts with (downloaders also write `<ytid>_30000_40000.wav`, `[<ytid>]-....wav`).

  Files `prepare` cannot decode (`.m4a`, `.webm`: what YouTube downloaders leave unless told to
  convert) are indexed too, after the decodable ones: their clips are then rejected with the
  command that converts them, not as missing, and a clip converted beside its download is read.
  """
  index = {}
  files = sorted(audio_root.rglob("*"))
  for p in files:
    if p.suffix.lower() in audio.AUDIO_SUFFIXES:
      index.setdefault(p.stem.lstrip("[")[:11], p)
      index[p.stem] = p
  for p in files:
    if p.suffix.lower() in audio.OTHER_AUDIO_SUFFIXES:
      index.setdefault(p.stem.lstrip("[")[:11], p)
      index.setdefault(p.stem, p)
  return index


def list_items(root: pathlib.Path, *, seed: int, metadata: str = "", audio_dir: str = "") -> Listing:
  """MusicCaps: `musiccaps-public.csv` (ytid, start_s, end_s, caption, aspect_list,
  is_audioset_eval) and audio files named by ytid (`<ytid>.<ext>`, or starting with the ytid)
  anywhere under the audio folder.

  A file may be the whole recording (it reaches end_s: the [start_s, end_s) clip is cut out) or
  the clip itself (as long as the clip); a file of any other length could be either and is
  rejected as "ambiguous length" (see `audio.load_audio`).
  The AudioSet evaluation clips form `test`; the rest splits 90/10 into train/validation by a
  seeded hash of the ytid. Aspects become tags.
  """
  path = metadata_file(root, metadata, "musiccaps-public.csv", "musiccaps", "ytid, start_s, end_s, caption")
  rows = metadata_rows(path)
  require_columns(path, rows, ("ytid", "start_s", "end_s", "caption"))
  audio_root = find_audio_root(root, audio_dir)
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
        "test" if truthy(row["is_audioset_eval"]) else hashed_split(ytid, seed, (("train", 0.9), ("validation", 0.1)))
      )
    else:
      split = hashed_split(ytid, seed)
    splits[split].append(
      AudioItem(
        id=ytid,
        path=str(files.get(ytid, audio_root / f"{ytid}.wav")),
        captions=caption_texts(row["caption"]),
        tags=listed_tags(row.get("aspect_list")),
        segment=segment,
      )
    )
  return Listing(nonempty(splits), file_root=FileRoot(audio_root, "--audio_dir"))


SOURCE = Source(
  name="musiccaps",
  layout="musiccaps-public.csv and audio files named by ytid under audio/",
  options=("seed", "metadata", "audio_dir"),
  list_items=list_items,
)
