"""Orbax checkpoints of the train state together with the Grain iterator position."""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from mclap.errors import UserError


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


def restore_on_host(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The train state saved at `step`, on this process's first device, whatever mesh or number of
  processes wrote it (Orbax otherwise insists on the saving topology)."""
  saved = ocp.StandardCheckpointer().metadata(pathlib.Path(mgr.directory) / str(step) / "state").item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


def load_tower(tower: nnx.Module, workdir: str | pathlib.Path, name: str) -> None:
  """Copies the trained weights and batch statistics of the model's `name` tower, from the latest
  checkpoint of an mclap training workdir, into `tower` (in place)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  mgr = ocp.CheckpointManager(directory.absolute()) if directory.is_dir() else None
  if mgr is None or mgr.latest_step() is None:
    raise UserError(f"{directory} holds no checkpoint: init_from must name a workdir written by mclap.train")
  saved = restore_on_host(mgr, mgr.latest_step())
  mgr.close()
  for group in ("params", "batch_stats"):
    for path, variable in nnx.to_flat_state(nnx.state(tower, nnx.Param if group == "params" else nnx.BatchStat)):
      node = saved.get(group, {}).get(name)
      for key in map(str, path):
        node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        raise UserError(
          f"{directory}: no {group} for {name}.{'.'.join(map(str, path))}; the checkpoint's {name} tower "
          "must have the architecture the config asks for (and have been trained, not frozen, there)"
        )
      value = node["value"]
      if value.shape != variable[...].shape:
        raise UserError(
          f"{directory}: {name}.{'.'.join(map(str, path))} has shape {list(value.shape)}, the config's "
          f"tower expects {list(variable[...].shape)}"
        )
      variable[...] = jnp.asarray(value)
