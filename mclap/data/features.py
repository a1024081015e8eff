"""Precomputed audio features (a frozen foundation model's embeddings) as the audio input.

A feature file is one track's `.npy` or `.npz` array, `[frames, dim]` (frame-level, at a fixed
frame rate) or `[dim]` (one vector per clip), in any float dtype. `prepare --source features`
stores them transposed, `[dim, frames]` float16, where a mel corpus stores `[n_mels, frames]`:
the pipeline then crops frames as it crops mel frames, and the `features` tower reads them.
`read_array` is the one reader of such files, for `prepare` and for `mclap.load`'s
`embed_features`, so that both refuse the same files for the same reasons.
"""

from __future__ import annotations

import collections
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from mclap.errors import ConfigError, ItemError, UserError

SUFFIXES = (".npy", ".npz")
NPZ_KEY = "features"  # The array an .npz holding several must name so.
FLOAT16_MAX = float(np.finfo(np.float16).max)
HEADER_FILE = "features.json"  # Written beside feature files by `mclap.embed --features_out`: dim, frame rate.


class FeatureError(ItemError):
  """Features that cannot be used; reasons: missing file | not a feature file | unreadable |
  ambiguous npz | not float | wrong rank | empty | wrong dim | non-finite values | too large (and,
  from the corpus or model: has frames)."""


def _open(path: str | os.PathLike) -> np.ndarray:
  """The file's array (an .npz's only one, or the one named `NPZ_KEY`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FeatureError("missing file", str(path))
  if path.suffix.lower() not in SUFFIXES:
    raise FeatureError("not a feature file", f"{path}: use .npy or .npz")
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      return loaded
    with loaded:
      names = list(loaded.files)
      if len(names) != 1 and NPZ_KEY not in names:
        raise FeatureError("ambiguous npz", f"{path} holds arrays {names}: name the features '{NPZ_KEY}'")
      return loaded[NPZ_KEY if NPZ_KEY in names else names[0]]
  except FeatureError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise FeatureError("unreadable", f"{path}: {type(e).__name__}: {e}") from e


def read_array(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
  """A feature file's array, checked by `check_array`."""
  return check_array(_open(path), str(path), dim)


def check_array(array: np.ndarray, path: str, dim: int | None = None) -> np.ndarray:
  """Features as float32 `[frames, dim]` (`[dim]` becomes one frame), checked: a float array of
  rank 1 or 2, with frames, finite, within float16's range (the corpus stores float16), and of
  `dim` features when given. Raises `FeatureError` naming `path` and the check that failed."""
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.floating):
    raise FeatureError("not float", f"{path} holds {array.dtype} values; features are float arrays")
  if array.ndim not in (1, 2):
    raise FeatureError("wrong rank", f"{path} has shape {list(array.shape)}; use [frames, dim] or [dim]")
  array = array.reshape(1, -1) if array.ndim == 1 else array
  if 0 in array.shape:
    raise FeatureError("empty", f"{path} has shape {list(array.shape)}")
  if dim is not None and array.shape[1] != dim:
    hint = "; it looks transposed: save [frames, dim]" if array.shape[0] == dim else ""
    raise FeatureError("wrong dim", f"{path} has {array.shape[1]} features per frame, not {dim}{hint}")
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    raise FeatureError("non-finite values", f"{path} holds NaN or infinite values")
  if (peak := float(np.abs(array).max())) > FLOAT16_MAX:
    raise FeatureError("too large", f"{path} holds values up to {peak:g}, beyond float16's {FLOAT16_MAX:g}")
  return array


def array_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
  """A feature file's array shape read from its header (None if it has none to read), without
  loading the values: how `prepare` learns the corpus's dimension from many files quickly."""
  try:
    if pathlib.Path(path).suffix.lower() == ".npy":
      return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)  # Maps the values, reads none.
    return tuple(_open(path).shape)
  except (OSError, ValueError, FeatureError):
    return None


def corpus_dim(shapes: list[tuple[int, ...]], where: str) -> tuple[int, bool]:
  """(feature dimension, whether the arrays are frame-level) from sample files' shapes: the most
  common last axis, and whether most have several frames. Arrays saved `[dim, frames]` (first
  axis the same everywhere, last varying) are refused here, before any work, rather than rejected
  one by one."""
  if not shapes:
    raise UserError(f"no readable .npy/.npz feature file among the first listed in {where}")
  last = collections.Counter(s[-1] for s in shapes)
  first = collections.Counter(s[0] for s in shapes if len(s) == 2)
  if len(shapes) > 1 and len(last) > 1 and len(first) == 1 and len(shapes) == first.total():
    raise UserError(
      f"the feature files in {where} look transposed: their first axis is always {next(iter(first))}, their "
      "last varies; save each as [frames, dim]"
    )
  framed = sum(len(s) == 2 and s[0] > 1 for s in shapes)
  return last.most_common(1)[0][0], framed > len(shapes) / 2


def crop_frames(crop_seconds: float, frame_rate: float) -> int:
  """Frames of a crop of `crop_seconds` at `frame_rate` frames/s (clip-level features, rate 0: 1)."""
  return max(1, int(round(crop_seconds * frame_rate))) if frame_rate else 1


def check_config(features: Any) -> dict[str, Any]:
  """`{dim, frame_rate}` of a config's (or bundle's) `data.features`, checked."""
  values = dict(features)
  if int(values.get("dim", 0)) < 1 or float(values.get("frame_rate", -1)) < 0:
    raise ConfigError(f"config.data.features={values}; it needs dim > 0 and frame_rate >= 0 (0: one vector per clip)")
  return {"dim": int(values["dim"]), "frame_rate": float(values["frame_rate"])}
