"""Reading PyTorch checkpoints (`torch.save`, zip format of torch >= 1.6) into numpy, without torch.

A checkpoint is a zip archive: `<name>/data.pkl` pickles the object tree, each tensor's storage is
a raw little-endian file `<name>/data/<key>`. The unpickler here builds numpy arrays from those
storages and refuses every Python global but a short allowlist, so loading never runs code from
the file (like `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from mclap.errors import UserError

_STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  """A tensor as a numpy copy of its (possibly strided, offset) view of a storage."""
  del unused  # requires_grad, backward hooks, metadata.
  size, stride = tuple(size), tuple(stride)
  if any(d == 0 for d in size):
    return np.zeros(size, storage.dtype)
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
  )
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "slice"): slice,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, archive: zipfile.ZipFile, prefix: str, path: pathlib.Path):
    super().__init__(archive.open(f"{prefix}data.pkl"))
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UserError(
      f"{self.path} holds a Python object of type {module}.{name}, which mclap does not load (it only reads "
      "tensors, numbers, strings and containers); save the state_dict alone: torch.save({'state_dict': "
      "model.state_dict()}, path)"
    )

  def persistent_load(self, pid: tuple) -> np.ndarray:
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage":
      raise UserError(f"{self.path}: unknown persistent object {kind!r}")
    if key not in self.storages:
      raw = self.archive.read(f"{self.prefix}data/{key}")
      self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
    return self.storages[key]


def load(path: str | pathlib.Path) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path} not found")
  if not zipfile.is_zipfile(path):
    raise UserError(
      f"{path} is not a zip-format PyTorch checkpoint (it was saved by torch < 1.6 or with "
      "_use_new_zipfile_serialization=False): load it with torch and save it again, or save its state_dict "
      "as .npz"
    )
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if not pickles:
      raise UserError(f"{path} is a zip archive without data.pkl: not a PyTorch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder").strip() != b"little":
      raise UserError(f"{path} was saved on a big-endian machine; re-save it on a little-endian one")
    try:
      return _Unpickler(archive, prefix, path).load()
    except UserError:
      raise
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
      raise UserError(f"{path} is damaged ({type(e).__name__}: {e})") from e
