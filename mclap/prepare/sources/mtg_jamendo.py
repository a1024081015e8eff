"""MTG-Jamendo (Bogdanov et al., 2019): full tracks with genre, mood/theme and instrument tags."""

from __future__ import annotations

import pathlib

from mclap.errors import UserError
from mclap.prepare.listing import AudioItem, FileRoot, Listing, Source, find_audio, find_audio_root

MTG_SUBSETS = {
  "genre": "autotagging_genre",
  "moodtheme": "autotagging_moodtheme",
  "instrument": "autotagging_instrument",
  "top50": "autotagging_top50tags",
  "all": "autotagging",
}


def list_items(root: pathlib.Path, *, subset: str = "", fold: int | None = None, audio_dir: str = "") -> Listing:
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
  audio_root = find_audio_root(root, audio_dir)
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
      items.append(AudioItem(id=fields[0], path=find_audio(audio_root, fields[3], (".low",)), tags=tuple(fields[5:])))
    splits[name] = items
  tags = [t for items in splits.values() for i in items for t in i.tags]
  extra = {"tags": sorted(set(tags)), "tag_text": tag_text(tags), "subset": subset, "split_number": fold}
  return Listing(splits, extra, require_captions=False, file_root=FileRoot(audio_root, "--audio_dir"))


def tag_text(tags) -> dict[str, str]:
  """'genre---rock' -> 'rock': the words a prompt should use for an MTG-Jamendo style tag."""
  return {t: t.split("---", 1)[-1] for t in sorted(set(tags))}


SOURCE = Source(
  name="mtg_jamendo",
  layout="data/splits/split-N/<subset>-{train,validation,test}.tsv",
  options=("subset", "fold", "audio_dir"),
  list_items=list_items,
)
