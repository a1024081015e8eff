"""Orbax checkpoints of the train state together with the Grain iterator position.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a job
killed while saving leaves the previous checkpoints as they were. What this module adds: resuming
falls back past a damaged checkpoint (moving it aside) instead of starting over, a checkpoint
written for another model is refused by name, and failed writes say what is still intact.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import sys
import time
import uuid
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mclap.errors import ConfigError, UserError, first_line
from mclap.models import ModelSpec, weights

# Where damaged checkpoints are moved, beside the checkpoint directory.
QUARANTINE = "damaged_checkpoints"


def manager(directory: str | pathlib.Path, keep: int | None, create: bool = True) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints under `directory` (created if needed and `create`; jobs that
  only read leave a mistyped directory uncreated)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


# Frozen pretrained weights are loaded from their source at start, not written every checkpoint.
_NOT_SAVED = ("frozen",)


def _saved_part(state: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in state.items() if k not in _NOT_SAVED}


def saved_bytes(state: dict[str, Any]) -> int:
  """Bytes of array data one checkpoint of `state` holds."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(_saved_part(state)))


def check_writable(directory: pathlib.Path, needed_bytes: int) -> None:
  """Fails before training if `directory` cannot be created and written, or if its file system has
  less than `needed_bytes` free."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-test-{uuid.uuid4().hex}"
    probe.write_bytes(b"mclap")
    probe.unlink()
  except OSError as e:
    raise UserError(f"cannot write to the workdir {directory} ({e.strerror or e}); choose a writable --workdir") from e
  free = shutil.disk_usage(directory).free
  if free < needed_bytes:
    raise UserError(
      f"{directory} has {free / 2**20:.0f} MiB free; checkpoints need {needed_bytes / 2**20:.0f} MiB "
      "(the next checkpoint and the best one): free space or choose another --workdir"
    )


def save(
  mgr: ocp.CheckpointManager, step: int, state: dict[str, Any], data_iterator=None, spec: ModelSpec | None = None
) -> None:
  """Starts writing the checkpoint of `step` (in the background; `wait` for it to finish), with the
  model spec that rebuilds its model (`weights.read_model`)."""
  items = {"state": ocp.args.StandardSave(_saved_part(state))}
  if spec is not None:
    items[weights.SPEC_ITEM] = ocp.args.JsonSave(spec.to_dict())
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  with _write_errors(mgr):
    mgr.save(step, args=ocp.args.Composite(**items))


def wait(mgr: ocp.CheckpointManager) -> None:
  """Blocks until the checkpoints being written are complete."""
  with _write_errors(mgr):
    mgr.wait_until_finished()


def close(*managers: ocp.CheckpointManager) -> None:
  """Finishes and closes `managers`; a background write that failed meanwhile is reported as
  `wait` reports it (closing is where Orbax surfaces a failure that `check_writes` had not seen yet)."""
  failed = []
  for mgr in managers:
    try:
      with _write_errors(mgr):
        mgr.close()
    except UserError as e:
      failed.append(e)
  if failed:
    raise failed[0]


def check_writes(mgr: ocp.CheckpointManager) -> None:
  """Raises if a background write has failed (cheap: call after every step)."""
  with _write_errors(mgr):
    mgr.check_for_errors()


@contextlib.contextmanager
def _write_errors(mgr: ocp.CheckpointManager):
  """Turns a failed checkpoint write (disk full, directory gone or read-only) into a `UserError`
  that lists the complete checkpoints left, which a re-run resumes from."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # Orbax and TensorStore report I/O failures in types of their own.
    directory = pathlib.Path(mgr.directory)
    intact = weights.checkpoint_steps(directory)
    kept = f"complete checkpoints there: steps {intact}" if intact else "no complete checkpoint there yet"
    raise UserError(
      f"writing a checkpoint to {directory} failed ({type(e).__name__}: {first_line(e)}); {kept}. "
      "Free space or fix the directory, then run the same command to resume"
    ) from e


def _check_same_model(path: pathlib.Path, state: dict[str, Any]) -> None:
  """Raises ConfigError if the checkpoint at `path` holds arrays named or shaped unlike `state`'s:
  it was written for another config, so falling back or restoring would be wrong."""
  saved = weights.flat_shapes(ocp.StandardCheckpointHandler().metadata(path / "state"))
  wanted = weights.flat_shapes(_saved_part(state))
  if saved == wanted:
    return
  if any(k.startswith("params/model/") for k in wanted) and not any(k.startswith("params/model/") for k in saved):
    raise ConfigError(
      f"the checkpoint {path} was written by mclap before 0.2, whose train state held the model and its objective's "
      "parts in one tree: resume it with mclap 0.1, or start a new --workdir (mclap.eval, mclap.export and "
      "model.audio.init_from still read it)"
    )
  averaged = ["ema" in {k.split("/")[0] for k in names} for names in (wanted, saved)]
  if averaged[0] != averaged[1]:
    raise ConfigError(
      f"the checkpoint {path} was written {'without' if averaged[0] else 'with'} a moving average of the "
      "parameters: resume with the config.train.ema_decay it was trained with, or start a new --workdir"
    )
  found = weights.shape_difference(wanted, saved)
  raise ConfigError(
    f"the checkpoint {path} was written for another model: {found}; use the config it was trained with "
    "(data.crop_seconds, data.mel, data.max_tokens and model.* must match) or a new --workdir"
  )


def restore(mgr: ocp.CheckpointManager, step: int, state: dict[str, Any], data_iterator=None) -> dict[str, Any]:
  """`state` with what was saved at `step` (shaped and sharded like it); also rewinds the iterator."""
  _check_same_model(pathlib.Path(mgr.directory) / str(step), state)
  items = {"state": ocp.args.StandardRestore(_saved_part(state))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return {**state, **mgr.restore(step, args=ocp.args.Composite(**items))["state"]}


def restore_latest(mgr: ocp.CheckpointManager, state: dict[str, Any], data_iterator) -> tuple[dict[str, Any], int]:
  """Restores the newest checkpoint that reads back whole; returns (state, step), step 0 if none.

  A damaged checkpoint (a file truncated or missing, garbage metadata) is moved to
  `damaged_checkpoints/` beside the directory, with a warning, and the one before it is tried.
  If every checkpoint is damaged the job stops rather than silently starting from scratch.
  """
  directory = pathlib.Path(mgr.directory)
  tried = []
  for step in reversed(mgr.all_steps()):
    try:
      return restore(mgr, step, state, data_iterator), step
    except ConfigError:
      raise
    except Exception as e:  # Whatever the damage, Orbax, TensorStore or Grain raise their own types.
      problem = f"{type(e).__name__}: {first_line(e)}"
      tried.append(f"step {step} ({problem})")
      moved = _quarantine(directory, step)
      print(f"warning: the checkpoint of step {step} is damaged ({problem}); moved to {moved}", file=sys.stderr)
      mgr.reload()
  if tried:
    raise UserError(
      f"no checkpoint in {directory} could be restored ({'; '.join(tried)}); they were moved to "
      f"{directory.parent / QUARANTINE}. Start a new --workdir, or restore the files and re-run"
    )
  return state, 0


def _quarantine(directory: pathlib.Path, step: int) -> pathlib.Path:
  """Moves the checkpoint of `step` aside (process 0; the others wait), so that it is neither
  tried again nor in the way when training writes that step anew."""
  target = directory.parent / QUARANTINE / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
  if jax.process_index() == 0:
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(directory / str(step)), str(target))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mclap quarantine {step}")
  return target
