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


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iterator=None) -> None:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  mgr.save(step, args=ocp.args.Composite(**items))


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator=None) -> Any:
  """The state saved at `step` (shaped and sharded like `abstract_state`); also rewinds the iterator."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return mgr.restore(step, args=ocp.args.Composite(**items))["state"]
