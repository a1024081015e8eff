"""The datasets `prepare` reads, one module each: `REGISTRY[name]` is its `listing.Source` (its
layout, its options, how it lists items). A new dataset is a module here with a `SOURCE`."""

from mclap.prepare.sources import (
  audiocaption,
  folder,
  gtzan,
  mtat,
  mtg_jamendo,
  musiccaps,
  song_describer,
  tinysol,
)

REGISTRY = {
  m.SOURCE.name: m.SOURCE for m in (audiocaption, folder, musiccaps, song_describer, gtzan, mtat, mtg_jamendo, tinysol)
}
