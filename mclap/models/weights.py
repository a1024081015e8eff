"""Where a model's weights come from: the pretrained parts a config names, and the checkpoints a
training workdir holds.

Training, evaluation and export all read models through this module, so evaluating or exporting
a workdir needs neither the trainer nor an optimizer. Checkpoints are read from their files on
this process's first device, whatever mesh or number of processes wrote them.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mclap import paths
from mclap.config_files import CONFIG_FILE, load_config
from mclap.data import mel as mel_lib
from mclap.errors import ConfigError, UserError, first_line
from mclap.models import DualEncoder, ModelSpec, bert, build_model, clip_text, spec_from_config
from mclap.models.spec import text_pretrained_dir

SPEC_ITEM = "spec"  # The model spec, saved beside the state in every checkpoint.
BUNDLE_META, BUNDLE_VARIABLES = "bundle.json", "variables"  # A bundle's (`serve.bundle`) settings and variables.


def is_workdir(path: pathlib.Path) -> bool:
  """Whether `path` is a training workdir with checkpoints (a bundle's tokenizer folder, or a
  BERT model's, also holds a config.json)."""
  return (path / CONFIG_FILE).is_file() and (path / "checkpoints").is_dir()


def check_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """`workdir` as a path, if `python -m mclap.train` wrote it; else a `UserError` naming the
  workdir one level off that the user meant, if there is one."""
  workdir = pathlib.Path(workdir)
  if not (workdir / CONFIG_FILE).is_file():
    what, remedy = f"a training workdir (no {CONFIG_FILE} in it)", "--workdir must name a folder written by mclap.train"
    raise UserError(paths.not_found(workdir, what, is_workdir, remedy, "--workdir"))
  return workdir


def workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a training workdir was trained with (its config.json)."""
  return load_config(str(check_workdir(workdir) / CONFIG_FILE))


def _on_first_device(metadata) -> Any:
  """A restore target for the arrays Orbax's `metadata` describes: as saved, on this process's
  first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


def read_arrays(path: pathlib.Path) -> dict[str, Any]:
  """The arrays Orbax's StandardCheckpointer wrote at `path`, as nested dicts on this process's
  first device, whatever topology wrote them (Orbax otherwise insists on the saving one)."""
  path = path.absolute()
  metadata = ocp.StandardCheckpointHandler().metadata(path)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, _on_first_device(metadata))


def saved_state(directory: pathlib.Path, step: int) -> dict[str, Any]:
  """The train state saved at `step` in a checkpoint directory (`read_arrays`)."""
  return read_arrays(directory / str(step) / "state")


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


def flat_leaves(tree) -> dict[str, Any]:
  """'params/model/audio/conv/kernel' -> leaf, for NNX states, nested dicts of arrays or shape
  structs and Orbax's metadata alike (an NNX Variable's trailing `value` dropped, keys as text:
  a layer numbered 0 or "0" is the same)."""

  def name(key) -> str:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(map(name, path)).removesuffix("/value"): leaf for path, leaf in leaves}


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """`flat_leaves`' shapes."""
  return {name: tuple(leaf.shape) for name, leaf in flat_leaves(tree).items()}


def shape_difference(
  expected: dict[str, tuple[int, ...]],
  got: dict[str, tuple[int, ...]],
  allow_missing=lambda name: False,
  allow_extra: bool = False,
) -> str | None:
  """The first difference between two `flat_shapes`: an array whose shape differs (parameters
  first), one missing from `got` (unless `allow_missing(name)`), one `got` has beyond `expected`
  (unless `allow_extra`); None if there is none."""
  if differ := sorted((k for k in expected if k in got and got[k] != expected[k]), key=lambda k: "params" not in k):
    return f"{differ[0]} has shape {list(got[differ[0]])} where {list(expected[differ[0]])} is expected"
  if missing := sorted(k for k in set(expected) - set(got) if not allow_missing(k)):
    return f"{len(missing)} expected arrays are missing (e.g. {missing[0]})"
  if (extra := sorted(set(got) - set(expected))) and not allow_extra:
    return f"{len(extra)} arrays are not expected (e.g. {extra[0]})"
  return None


def copy_variables(target: nnx.Module, saved: dict[str, Any], where: str, allow_missing=lambda path: False) -> None:
  """Copies the saved parameters and batch statistics (`{"params": ..., "batch_stats": ...}`,
  nested dicts) into `target`'s variables of the same path, in place, after checking that every
  variable is there with its shape (a missing one is allowed where `allow_missing(path)`, path
  without the group)."""
  groups = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
  expected = flat_shapes({group: nnx.state(target, kind) for group, kind in groups.items()})
  allowed = lambda name: allow_missing(tuple(name.split("/")[1:]))  # noqa: E731
  found = flat_leaves(saved)  # Looked up by the names the check compared.
  if problem := shape_difference(expected, {name: tuple(leaf.shape) for name, leaf in found.items()}, allowed, True):
    raise UserError(
      f"{where}: {problem}; the model must have the architecture it was trained with (data.crop_seconds, "
      "data.mel, data.max_tokens and model.* as then; a tower trained there, not frozen)"
    )
  for group, kind in groups.items():
    for path, variable in nnx.to_flat_state(nnx.state(target, kind)):
      if (leaf := found.get("/".join(map(str, (group, *path))))) is not None:
        # From the host, in the variable's dtype (bundles may store bfloat16); replaced whole: an
        # indexed assignment would compile a scatter per shape.
        variable.value = jnp.asarray(np.asarray(leaf), variable.dtype)


def is_bundle(path: pathlib.Path) -> bool:
  """Whether `path` is an inference bundle (`mclap.export` or an importer wrote it)."""
  return (path / BUNDLE_META).is_file() and (path / BUNDLE_VARIABLES).is_dir()


def bundle_variables(bundle: str | pathlib.Path, key: str) -> dict[str, Any]:
  """A bundle's variables (one nested dict: parameters and batch statistics together), for the
  config key `key` that named it."""
  try:
    return read_arrays(pathlib.Path(bundle) / BUNDLE_VARIABLES)
  except Exception as e:  # Orbax and TensorStore report damage in types of their own.
    problem = f"{type(e).__name__}: {first_line(e)}"
    raise ConfigError(
      f"config.{key}={bundle}: cannot read its variables ({problem}); name an intact bundle (written by "
      "mclap.export or an importer)"
    ) from e


def load_tower(
  tower: nnx.Module, source: str | pathlib.Path, name: str, data: ml_collections.ConfigDict | None = None
) -> None:
  """Copies the trained weights and batch statistics of the `name` tower into `tower` (in place):
  from the latest checkpoint of an mclap training workdir, or from a bundle (an export, or an
  imported MusCALL or LAION-CLAP model). With `data`, the config's data settings, the tower must
  have been trained on the same input (mel settings, or precomputed features)."""
  source, key = pathlib.Path(source), f"model.{name}.init_from"
  if is_bundle(source):
    if data is not None:
      _check_same_input(_bundle_data(source), data, f"config.{key}={source}")
    saved = bundle_variables(source, key).get(name, {})
    copy_variables(tower, {"params": saved, "batch_stats": saved}, f"bundle {source} ({name} tower)")
    return
  directory = source / "checkpoints"
  steps = checkpoint_steps(directory)
  if not steps:
    what = "a training workdir with checkpoints or a bundle"
    remedy = "init_from must name a workdir written by mclap.train, or a bundle"
    found = lambda p: is_workdir(p) or is_bundle(p)  # noqa: E731
    raise UserError(paths.not_found(source, what, found, remedy, f"--config.{key}="))
  if data is not None:
    _check_same_input(workdir_config(source).data, data, f"config.{key}={source}")
  saved = saved_state(directory, steps[-1])
  towers = {group: _model_part(saved, group).get(name, {}) for group in ("params", "batch_stats")}
  copy_variables(tower, towers, f"{directory} ({name} tower)")


def _bundle_data(bundle: pathlib.Path) -> ml_collections.ConfigDict:
  """The data settings a bundle's model reads (its inference config's)."""
  return ml_collections.ConfigDict(json.loads((bundle / BUNDLE_META).read_text())["config"]).data


def _check_same_input(trained_on: ml_collections.ConfigDict, data: ml_collections.ConfigDict, where: str) -> None:
  """A model or tower taken from elsewhere reads what it was trained on: the same mel settings
  (every weight would otherwise be applied to other features, silently), or the same features."""
  kind = "features" if "features" in data else "mel"
  if kind not in trained_on:
    raise ConfigError(f"{where}: it was trained on {'features' if kind == 'mel' else 'log-mels'}, not {kind}")
  theirs, ours = (c[kind].to_dict() for c in (trained_on, data))
  if kind == "mel":
    theirs, ours = mel_lib.complete(theirs), mel_lib.complete(ours)
  if diff := [k for k in sorted(theirs.keys() | ours.keys()) if theirs.get(k) != ours.get(k)]:
    details = "; ".join(f"{k}: trained on {theirs.get(k)!r}, config {ours.get(k)!r}" for k in diff)
    remedy = "set them (" + " ".join(f"--config.data.{kind}.{k}={theirs.get(k)}" for k in diff) + ")"
    if theirs == mel_lib.complete(mel_lib.muscall_torchaudio_config().to_dict()):  # An imported MusCALL's.
      remedy = "they are the released MusCALL's: add the torchaudio variant (configs/muscall.py:torchaudio)"
    raise ConfigError(
      f"{where}: it was trained on other {kind} settings than config.data.{kind} ({details}); {remedy} "
      "and prepare the corpus with that config"
    )


def load_pretrained(model: DualEncoder, config: ml_collections.ConfigDict) -> None:
  """Loads the pretrained weights the config names into `model`, in place: every variable from a
  bundle (`model.init_from`, e.g. an imported MusCALL or CLAP model: `configs/finetune.py`), or a
  BERT or CLIP text tower and an audio tower from a trained mclap workdir (`model.audio.init_from`)."""
  if bundle := config.model.get("init_from", ""):
    if config.model.audio.get("init_from", ""):
      raise ConfigError(
        "config.model.init_from starts the whole model from a bundle; leave model.audio.init_from empty"
      )
    if not is_bundle(pathlib.Path(bundle)):
      remedy = "model.init_from must name a bundle (written by mclap.export or an importer)"
      raise ConfigError(paths.not_found(bundle, "a bundle", is_bundle, remedy, "--config.model.init_from="))
    _check_same_input(_bundle_data(pathlib.Path(bundle)), config.data, f"config.model.init_from={bundle}")
    saved = bundle_variables(bundle, "model.init_from")
    copy_variables(model, {"params": saved, "batch_stats": saved}, f"bundle {bundle}")
    return
  if config.model.text.kind == "bert":
    bert.load_weights(model.text, text_pretrained_dir(config))
  if config.model.text.kind == "clip":
    directory = text_pretrained_dir(config)
    copy_variables(model.text, {"params": clip_text.read_variables(directory)}, str(directory / "model.safetensors"))
  if source := config.model.audio.get("init_from", ""):
    load_tower(model.audio, source, "audio", config.data)


def _frozen_towers(config: ml_collections.ConfigDict) -> set[str]:
  """Towers whose parameters (some or all) are not trained, so not checkpointed: they come from
  their pretrained source."""
  text = config.model.text
  frozen = {t for t in ("audio", "text") if config.model[t].get("freeze", False)}
  return frozen | ({"text"} if text.kind == "bert" and text.get("freeze_layers", 0) else set())


def _trained_parts(saved: dict[str, Any]) -> dict[str, Any]:
  """The model's parameters and batch statistics in a saved train state: the parameters' moving
  average where training kept one (`train.ema_decay`), as validation used."""
  trained = "ema" if "ema" in saved else "params"
  return {"params": _model_part(saved, trained), "batch_stats": _model_part(saved, "batch_stats")}


def read_model(
  workdir: str | pathlib.Path,
  step: int | None = None,
  best: bool = False,
  check=lambda spec, step: None,
  average_with: Sequence[int] = (),
) -> tuple[DualEncoder, ModelSpec, ml_collections.ConfigDict, int]:
  """(model, its spec, the workdir's config, step) of a checkpoint of a training workdir (the
  latest, `step`, or the best one), on this process's first device, with the parameters' moving
  average when training kept one. The checkpoint and its spec
  are read, and `check(spec, step)` called, before the model is built; nothing is created in
  `workdir`. With `average_with` (other steps of the same directory) the model's variables are the
  elementwise mean of all these checkpoints' (weight averaging), the model built once."""
  config = workdir_config(workdir)
  workdir = pathlib.Path(workdir)
  directory = workdir / ("best" if best else "checkpoints")
  available = checkpoint_steps(directory)
  if not available:
    if best and (latest := checkpoint_steps(workdir / "checkpoints")):  # Stopped before its first validation.
      raise ConfigError(
        f"{workdir} has no best checkpoint yet (validation keeps one, every train.eval_every steps); leave out "
        f"--best for its latest (step {latest[-1]})"
      )
    raise ConfigError(f"no checkpoints in {directory}; train first with python -m mclap.train --workdir {workdir}")
  step = available[-1] if step is None else step
  if step not in available:
    raise ConfigError(f"no checkpoint for step {step} in {directory}; available: {available}")
  spec_file = directory / str(step) / SPEC_ITEM / "metadata"
  if spec_file.is_file():
    spec = ModelSpec.from_dict(json.loads(spec_file.read_text()), where=str(spec_file))
  else:  # Written before checkpoints held their spec.
    spec = spec_from_config(config)
  check(spec, step)
  model = build_model(spec, nnx.Rngs(0))
  load_pretrained(model, config)
  frozen = _frozen_towers(config)
  parts = [_trained_parts(saved_state(directory, s)) for s in (step, *average_with)]
  mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0, dtype=np.float64).astype(xs[0].dtype), *parts)
  copy_variables(model, mean, f"checkpoint {directory / str(step)}", allow_missing=lambda path: path[0] in frozen)
  return model, spec, config, step
