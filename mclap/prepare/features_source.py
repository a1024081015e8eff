"""`--source features`: per-track arrays of precomputed audio features with their captions.

The layout is `folder`'s (a `metadata.csv`/`.jsonl` with `path, caption[, tags][, split]`), the
paths naming `.npy`/`.npz` files (`mclap.data.features`). The corpus's feature dimension is the
most common one among the first files, read from their headers in the parent before any work;
its frame rate comes from `--features_frame_rate`, or from the `features.json` that
`mclap.embed --features_out` writes beside its files. Files that differ (another dimension, NaN,
wrong rank, frames in a corpus of one vector per clip) are rejected with the reason.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

from mclap.data import features as features_lib
from mclap.data.records import Reject
from mclap.errors import UserError
from mclap.prepare.listing import AudioItem, check_files_exist
from mclap.prepare.sources import folder

LAYOUT = "metadata.csv, .jsonl or .json with path (of .npy/.npz feature files), caption[, tags][, split] columns"
SAMPLE_FILES = 64  # Files whose headers decide the corpus's dimension.


def features_record(item: AudioItem, dim: int, frame_rate: float) -> dict[str, Any] | Reject:
  """The writer's work function: one feature file as a record of `features [dim, frames]`."""
  if item.bad_metadata:
    return Reject(id=item.id, reason="bad metadata", detail=item.bad_metadata)
  try:
    array = features_lib.read_array(item.path, dim)
  except features_lib.FeatureError as e:
    return Reject(id=item.id, reason=e.reason, detail=e.detail)
  if not frame_rate and len(array) > 1:
    detail = f"{item.path} has {len(array)} frames; the corpus has one vector per clip (no --features_frame_rate)"
    return Reject(id=item.id, reason="has frames", detail=detail)
  captions, tags = list(item.captions), list(item.tags)
  return {"id": item.id, "features": array.T, "captions": captions, "tags": tags, "label": item.label}


def _frame_rate(root: pathlib.Path, given: float | None, frame_level: bool) -> float:
  """The corpus's frames per second: `given`, else the one `features.json` records, else 0 (one
  vector per clip), which frame-level files cannot have."""
  header = root / features_lib.HEADER_FILE
  if given is None and header.is_file():
    try:
      given = float(json.loads(header.read_text(encoding="utf-8"))["frame_rate"])
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"{header} does not give a frame_rate ({e}); fix it or pass --features_frame_rate") from e
  if given is not None and given < 0:
    raise UserError(f"--features_frame_rate={given:g}; give the feature frames per second, or 0 for clip vectors")
  if frame_level and not given:
    raise UserError(
      f"the feature files in {root} are frame-level [frames, dim]: pass --features_frame_rate R, their frames per "
      "second (the extractor's hop), so that crops of --config.data.crop_seconds become frames"
    )
  if given and not frame_level:
    raise UserError(
      f"--features_frame_rate={given:g}, but the feature files in {root} hold one vector per clip: leave it out"
    )
  return float(given or 0.0)


def list_items(root: pathlib.Path, *, seed: int, metadata: str, frame_rate: float | None):
  """(listing, work function, `{dim, frame_rate}`) for the feature files `root`'s metadata lists."""
  listing = folder.list_files(root, seed=seed, metadata=metadata, source="features")
  items = [item for items in listing.splits.values() for item in items]
  check_files_exist(listing.file_root, items)  # The headers below need files: say where they are.
  paths = [item.path for item in items if item.path]
  shapes = [s for s in map(features_lib.array_shape, paths[: SAMPLE_FILES * 4]) if s][:SAMPLE_FILES]
  dim, frame_level = features_lib.corpus_dim(shapes, str(root))
  info = {"dim": dim, "frame_rate": _frame_rate(root, frame_rate, frame_level)}
  return listing, functools.partial(features_record, **info), info
