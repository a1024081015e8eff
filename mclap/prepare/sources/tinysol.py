"""TinySOL (Cella et al., 2020): 2,913 single notes of 14 instruments."""

from __future__ import annotations

import pathlib

from mclap.prepare.listing import (
  AudioItem,
  FileRoot,
  Listing,
  Source,
  find_audio_root,
  metadata_file,
  metadata_rows,
  require_columns,
)


def list_items(root: pathlib.Path, *, fold: int | None = None, audio_dir: str = "", metadata: str = "") -> Listing:
  """TinySOL: `TinySOL_metadata.csv` (Path, Fold, Family, Instrument (in full), ...) and the
  audio folder `TinySOL/` (or `audio/`), as Zenodo's archives unpack; mirdata's download keeps the
  metadata in `annotation/`. Labels are the instruments; tags the instrument and its
  family. Everything is `test` (zero-shot use) unless `fold` is given: then that fold is `test`
  and the other four are `train`.
  """
  path = metadata_file(
    root, metadata, "TinySOL_metadata.csv", "tinysol", "Path, Fold, Family, Instrument (in full)", ("annotation",)
  )
  rows = metadata_rows(path)
  instrument_column = next((c for c in ("Instrument (in full)", "Instrument Name") if rows and c in rows[0]), "")
  require_columns(path, rows, ("Path", "Fold", "Family", instrument_column or "Instrument (in full)"))
  audio_root = find_audio_root(root, audio_dir, ("TinySOL", "audio"))
  labels = sorted({r[instrument_column].strip() for r in rows})
  splits: dict[str, list[AudioItem]] = {"train": [], "test": []} if fold is not None else {"test": []}
  for row in rows:
    instrument = row[instrument_column].strip()
    split = "test" if fold is None or row["Fold"].strip() == str(fold) else "train"
    splits[split].append(
      AudioItem(
        id=row["Path"].strip(),
        path=str(audio_root / row["Path"].strip()),
        tags=(instrument, row["Family"].strip()),
        label=labels.index(instrument),
      )
    )
  return Listing(splits, {"label_names": labels}, require_captions=False, file_root=FileRoot(audio_root, "--audio_dir"))


SOURCE = Source(
  name="tinysol",
  layout="TinySOL_metadata.csv (or annotation/TinySOL_metadata.csv) and the TinySOL/ or audio/ folder",
  options=("fold", "audio_dir", "metadata"),
  list_items=list_items,
)
