"""Where a model's weights come from: the pretrained parts a config names, and the checkpoints a
training workdir holds.

Training, evaluation and export all read models through this module, so evaluating or exporting
a workdir needs neither the trainer nor an optimizer. Checkpoints are read from their files on
this process's first device, whatever mesh or number of processes wrote them.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mclap.errors import ConfigError, UserError
from mclap.models import DualEncoder, ModelSpec, bert, build_model, spec_from_config
from mclap.models.spec import text_pretrained_dir

CONFIG_FILE = "config.json"
SPEC_ITEM = "spec"  # The model spec, saved beside the state in every checkpoint.


def workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a training workdir was trained with (its config.json)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise UserError(f"{path} not found: --workdir must be a workdir written by python -m mclap.train")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def on_first_device(metadata) -> Any:
  """A restore target for the arrays Orbax's `metadata` describes: as saved, on this process's
  first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


def saved_state(directory: pathlib.Path, step: int) -> dict[str, Any]:
  """The train state saved at `step` in a checkpoint directory, as nested dicts on this process's
  first device (Orbax otherwise insists on the saving topology)."""
  path = (directory / str(step) / "state").absolute()
  metadata = ocp.StandardCheckpointHandler().metadata(path)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, on_first_device(metadata))


def checkpoint_steps(directory: pathlib.Path) -> list[int]:
  """Steps with a finished checkpoint (Orbax's temporary directories have other names)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def _model_part(saved: dict[str, Any], group: str) -> dict[str, Any]:
  """The model's share of a saved state group (`params`, `batch_stats`). Checkpoints written before
  objectives owned their heads held the model's variables at the top of each group."""
  part = saved.get(group, {})
  return part.get("model", part) if isinstance(part, dict) else {}


def copy_variables(target: nnx.Module, saved: dict[str, Any], where: str, allow_missing=lambda path: False) -> None:
  """Copies the saved parameters and batch statistics (`{"params": ..., "batch_stats": ...}`,
  nested dicts of `{"value": array}`) into `target`'s variables of the same path, in place.
  A variable missing there is an error unless `allow_missing(path)`; a shape differing always is."""
  for group, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    for path, variable in nnx.to_flat_state(nnx.state(target, kind)):
      node = saved.get(group, {})
      for key in map(str, path):
        node = node.get(key) if isinstance(node, dict) else None
      name = ".".join(map(str, path))
      if node is None:
        if allow_missing(path):
          continue
        raise UserError(
          f"{where}: no {group} for {name}; it must have the architecture the config asks for (and have been "
          "trained, not frozen, there)"
        )
      value = node["value"] if isinstance(node, dict) else node
      if tuple(value.shape) != tuple(variable[...].shape):
        raise UserError(
          f"{where}: {name} has shape {list(value.shape)}, the model expects {list(variable[...].shape)} "
          "(data.crop_seconds, data.mel, data.max_tokens and model.* must be those it was trained with)"
        )
      variable[...] = np.asarray(value)  # From the host: the target may live on other devices.


def load_tower(tower: nnx.Module, workdir: str | pathlib.Path, name: str) -> None:
  """Copies the trained weights and batch statistics of the `name` tower, from the latest
  checkpoint of an mclap training workdir, into `tower` (in place)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  steps = checkpoint_steps(directory)
  if not steps:
    raise UserError(f"{directory} holds no checkpoint: init_from must name a workdir written by mclap.train")
  saved = saved_state(directory, steps[-1])
  towers = {group: _model_part(saved, group).get(name, {}) for group in ("params", "batch_stats")}
  copy_variables(tower, towers, f"{directory} ({name} tower)")


def load_pretrained(model: DualEncoder, config: ml_collections.ConfigDict) -> None:
  """Loads the pretrained weights the config names into `model`, in place: a BERT text tower, and
  an audio tower from a trained mclap workdir (`model.audio.init_from`)."""
  if config.model.text.kind == "bert":
    bert.load_weights(model.text, text_pretrained_dir(config))
  if workdir := config.model.audio.get("init_from", ""):
    load_tower(model.audio, workdir, "audio")


def _frozen_towers(config: ml_collections.ConfigDict) -> set[str]:
  """Towers whose parameters (some or all) are not trained, so not checkpointed: they come from
  their pretrained source."""
  text = config.model.text
  frozen = {t for t in ("audio", "text") if config.model[t].get("freeze", False)}
  return frozen | ({"text"} if text.kind == "bert" and text.get("freeze_layers", 0) else set())


def read_model(
  workdir: str | pathlib.Path, step: int | None = None, best: bool = False
) -> tuple[DualEncoder, ModelSpec, ml_collections.ConfigDict, int]:
  """(model, its spec, the workdir's config, step) of a checkpoint of a training workdir (the
  latest, `step`, or the best one), on this process's first device. The checkpoint is found before
  the model is built, and nothing is created in `workdir`."""
  workdir = pathlib.Path(workdir)
  directory = workdir / ("best" if best else "checkpoints")
  available = checkpoint_steps(directory)
  if not available:
    raise ConfigError(f"no checkpoints in {directory}; train first with python -m mclap.train --workdir {workdir}")
  step = available[-1] if step is None else step
  if step not in available:
    raise ConfigError(f"no checkpoint for step {step} in {directory}; available: {available}")
  config = workdir_config(workdir)
  spec_file = directory / str(step) / SPEC_ITEM / "metadata"
  if spec_file.is_file():
    spec = ModelSpec.from_dict(json.loads(spec_file.read_text()), where=str(spec_file))
  else:  # Written before checkpoints held their spec.
    spec = spec_from_config(config)
  model = build_model(spec, nnx.Rngs(0))
  load_pretrained(model, config)
  frozen = _frozen_towers(config)
  saved = saved_state(directory, step)
  parts = {group: _model_part(saved, group) for group in ("params", "batch_stats")}
  copy_variables(model, parts, f"checkpoint {directory / str(step)}", allow_missing=lambda path: path[0] in frozen)
  return model, spec, config, step
