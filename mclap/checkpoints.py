"""Orbax checkpoints of the train state together with the Grain iterator position."""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp


def manager(directory: str | pathlib.Path, keep: int | None) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints under `directory` (created if needed)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


# Frozen pretrained weights are loaded from their source at start, not written every checkpoint.
_NOT_SAVED = ("frozen",)


def save(mgr: ocp.CheckpointManager, step: int, state: dict[str, Any], data_iterator=None) -> None:
  items = {"state": ocp.args.StandardSave({k: v for k, v in state.items() if k not in _NOT_SAVED})}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  mgr.save(step, args=ocp.args.Composite(**items))


def restore(mgr: ocp.CheckpointManager, step: int, state: dict[str, Any], data_iterator=None) -> dict[str, Any]:
  """`state` with what was saved at `step` (shaped and sharded like it); also rewinds the iterator."""
  saved = {k: v for k, v in state.items() if k not in _NOT_SAVED}
  items = {"state": ocp.args.StandardRestore(saved)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return {**state, **mgr.restore(step, args=ocp.args.Composite(**items))["state"]}
