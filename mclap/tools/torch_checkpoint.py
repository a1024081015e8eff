"""Reading PyTorch checkpoints (`torch.save`, zip format of torch >= 1.6) into numpy, without torch.

A checkpoint is a zip archive: `<name>/data.pkl` pickles the object tree, each tensor's storage is
a raw little-endian file `<name>/data/<key>`. The unpickler here builds numpy arrays from those
storages and containers from a short allowlist; any other Python object (a training script's
`argparse.Namespace`, a whole pickled `nn.Module`) becomes an `Opaque` record of its pickled
state, so loading never runs code from the file (like `torch.load(weights_only=True)`), and the
weights in such an object can still be read (`module_state`).
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


class Opaque:
  """An object of a class mclap does not load, kept as data: the class's name, the arguments it
  was pickled with and its state (`__dict__`). Nothing of the class is imported or run."""

  kind = ""
  args: tuple = ()  # Class-level defaults: NEWOBJ makes an instance without calling __init__.
  state: Any = None

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state: Any) -> None:
    self.state = state

  def __setitem__(self, key: Any, value: Any) -> None:  # What a dict or list subclass held.
    vars(self).setdefault("items", {})[key] = value

  def append(self, value: Any) -> None:
    self[len(vars(self).get("items", {}))] = value

  def extend(self, values: Any) -> None:
    for value in values:
      self.append(value)


def _opaque_class(module: str, name: str) -> type[Opaque]:
  return type(name, (Opaque,), {"kind": f"{module}.{name}"})


def module_state(obj: Any, prefix: str = "") -> dict[str, np.ndarray] | None:
  """The state dict of a whole pickled `torch.nn.Module` (`torch.save(model, path)`): its and its
  submodules' parameters and persistent buffers, named as `model.state_dict()` names them; None
  if `obj` is not such a module."""
  state = obj.state if isinstance(obj, Opaque) else None
  if not (isinstance(state, dict) and isinstance(state.get("_parameters"), dict)):
    return None
  skip = state.get("_non_persistent_buffers_set") or set()
  found = {f"{prefix}{k}": v for k, v in state["_parameters"].items() if isinstance(v, np.ndarray)}
  found |= {f"{prefix}{k}": v for k, v in (state.get("_buffers") or {}).items() if k not in skip and v is not None}
  for name, child in (state.get("_modules") or {}).items():
    found |= module_state(child, f"{prefix}{name}.") or {}
  return found


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("builtins", "set"): set,
  ("builtins", "frozenset"): frozenset,
  ("builtins", "slice"): slice,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, archive: zipfile.ZipFile, prefix: str, path: pathlib.Path):
    super().__init__(archive.open(f"{prefix}data.pkl"))
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages: dict[str, np.ndarray] = {}
    self.opaque: dict[tuple[str, str], type[Opaque]] = {}

  def find_class(self, module: str, name: str) -> Any:
    module = "builtins" if module == "__builtin__" else module  # Protocol 2 (torch.save's) names Python 2's.
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    return self.opaque.setdefault((module, name), _opaque_class(module, name))

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
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError, EOFError) as e:
      raise UserError(f"{path} is damaged ({type(e).__name__}: {e})") from e
