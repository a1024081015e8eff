"""PyTorch state dicts as the importers read them: loaded without torch, and taken apart into
mclap's variables while recording which arrays were used (so that the rest can be named)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from mclap import paths
from mclap.errors import UserError
from mclap.tools import torch_checkpoint

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # Where training scripts keep the weights.
_PREFIXES = ("module.", "model.")  # DataParallel's; a Lightning module's `self.model`.
_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".npz")  # What checkpoint files are named.


def _arrays(tree) -> dict[str, np.ndarray] | None:
  """The state dict in a loaded checkpoint: the dict of arrays itself, a whole pickled module's, or
  one under a key that training scripts use for it (MusCALL's {"epoch", "state_dict",
  "optimizer"}, {"model": ...})."""
  if (state := torch_checkpoint.module_state(tree)) is not None:
    return state
  if not isinstance(tree, dict):
    return None
  if tree and all(isinstance(v, np.ndarray) for v in tree.values()):
    return tree
  return next((found for key in _WRAPPERS if (found := _arrays(tree.get(key))) is not None), None)


def read(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The model's state dict from a training checkpoint, a bare state dict, or an `.npz` of its
  arrays; a prefix that every name carries (`module.`, `model.`) removed."""
  path = pathlib.Path(path)
  _check_file(path)
  if path.suffix == ".npz":
    with np.load(path) as data:
      state = dict(data)
  else:
    loaded = torch_checkpoint.load(path)
    if (state := _arrays(loaded)) is None:
      held = f"a dict of {sorted(map(str, loaded))[:8]}" if isinstance(loaded, dict) else _kind(loaded)
      raise UserError(
        f"{path} holds no state dict of arrays ({held}); save the model's with torch.save(model.state_dict(), ...)"
      )
  for prefix in _PREFIXES:
    if all(k.startswith(prefix) for k in state):
      state = {k.removeprefix(prefix): v for k, v in state.items()}
  return {k: np.asarray(v) for k, v in state.items()}


def _check_file(path: pathlib.Path) -> None:
  """A checkpoint named one level off: its folder (a training run's, holding best_model.pth.tar)
  or a name with a typo (`best_model.pth` for `best_model.pth.tar`) gets the file meant."""
  if path.is_file():
    return
  if path.is_dir():
    found = sorted(p for p in (*path.glob("*"), *path.glob("*/*")) if p.suffix in _SUFFIXES and p.is_file())[:3]
    meant = " or ".join(f"--checkpoint {p}" for p in found)
    raise UserError(f"{path} is a folder; " + (f"did you mean {meant}?" if found else "name the checkpoint file in it"))
  close = paths.close_file(path)
  meant = f"; did you mean --checkpoint {close}?" if close else ""
  raise UserError(f"{path} does not exist{meant}")


def _kind(obj) -> str:
  return obj.kind if isinstance(obj, torch_checkpoint.Opaque) else type(obj).__name__


class Tracked(dict):
  """A state dict whose arrays are read as float32, recording which names were read; a missing
  name says the checkpoint is not a `model` of the architecture expected."""

  def __init__(self, state: dict[str, np.ndarray], model: str):
    super().__init__(state)
    self.used: set[str] = set()
    self.model = model

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self:
      raise UserError(f"the checkpoint has no {key}: it is not a {self.model} model of the expected architecture")
    self.used.add(key)
    return np.asarray(super().__getitem__(key), np.float32)


def count(state: dict[str, np.ndarray], pattern: str) -> int:
  """How many distinct indices `{i}` the names matching `pattern` have (sizes the arrays show)."""
  regex = re.compile(pattern.replace(".", r"\.").replace("{i}", r"(\d+)"))
  return len({m.group(1) for k in state if (m := regex.fullmatch(k))})
