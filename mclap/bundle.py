"""Inference bundles: a model's variables with everything needed to use it, and nothing else.

A bundle is a directory:

```
B/bundle.json   format, version, mclap version, where the weights came from, dtype, and the config
                (model, mel settings, crop, token length) that rebuilds the model
B/variables/    Orbax checkpoint of the model's variables (parameters, batch statistics, constants)
B/tokenizer/    tokenizer files (and a BERT tower's config.json), no weights
```

Only the parts that embed audio and text are kept: an objective's extra heads (SSL, matching,
discriminator, logit bias) and the Sentence-BERT loss encoder are left out. Loading reads nothing
outside the bundle, so it can be copied anywhere.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import mclap
from mclap import checkpoints
from mclap.data import mel as mel_lib
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.models import build_model

FORMAT, VERSION = "mclap.bundle", 1
BUNDLE_FILE, VARIABLES_DIR, TOKENIZER_DIR = "bundle.json", "variables", "tokenizer"
DTYPES = ("float32", "bfloat16")
DTYPE_NAMES = {"float32": "float32", "f32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}  # Short names too.
# Tokenizer directories can hold a model's weights too; the bundle has its own.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt")


class BundleError(UserError):
  """A bundle directory is missing, incomplete, or of another format version."""


def inference_config(config: ml_collections.ConfigDict, dtype: str = "float32") -> ml_collections.ConfigDict:
  """The part of a training config that rebuilds the embedding model, computing in `dtype`."""
  if dtype not in DTYPE_NAMES:
    raise UserError(f"dtype {dtype!r}; use {' or '.join(DTYPES)}")
  dtype = DTYPE_NAMES[dtype]
  c = ml_collections.ConfigDict()
  c.data = {k: config.data[k] for k in ("crop_seconds", "eval_crops", "max_tokens", "tokenizer_dir")}
  c.data.crop = config.data.get("crop", "mel")  # Where inference crops: see `inference.Model.mel_crops`.
  c.data.mel = mel_lib.complete(config.data.mel.to_dict())
  c.model = config.model.to_dict()
  c.model.audio.init_from = ""
  c.loss = dict(name="infonce")  # No objective-specific parts.
  c.train = dict(dtype=dtype, remat="none")
  return c


def abstract_model(config: ml_collections.ConfigDict) -> nnx.Module:
  """The model of an inference config, with shapes but no values (nothing is computed)."""
  vocab_size = tokenizer_lib.for_config(config).vocab_size
  return nnx.eval_shape(lambda: build_model(config, vocab_size=vocab_size, rngs=nnx.Rngs(0)))


def abstract_variables(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The variables of the inference model of `config`: nested dict of shape/dtype structs."""
  return nnx.state(abstract_model(config)).to_pure_dict()


def variables_of(model: nnx.Module, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The values (host numpy, nested dict) of `model` that the inference model of `config` has;
  `model` may have more parts (a training objective's)."""
  wanted = abstract_variables(config)
  have = jax.device_get(nnx.state(model).to_pure_dict())

  def pick(want, got):
    return {k: pick(v, got[k]) if isinstance(v, dict) else np.asarray(got[k]) for k, v in want.items()}

  picked = pick(wanted, have)
  if problem := shape_mismatch(wanted, picked):
    raise UserError(f"the trained model does not fit its inference model: {problem}")
  return picked


def shape_mismatch(expected: dict[str, Any], got: dict[str, Any], path: str = "") -> str | None:
  """The first difference in names or shapes between two nested dicts of arrays (or shape
  structs), None if there is none. Keys compare as text: Orbax restores integer keys as strings."""
  want_keys, have_keys = {str(k): k for k in expected}, {str(k): k for k in got}
  if set(want_keys) != set(have_keys):
    return f"{path or '/'} holds {sorted(have_keys)}, expected {sorted(want_keys)}"
  for name, key in want_keys.items():
    want, have = expected[key], got[have_keys[name]]
    if isinstance(want, dict) != isinstance(have, dict):
      return f"{path}{name} is {'not ' if isinstance(want, dict) else ''}a group of arrays where expected"
    if isinstance(want, dict):
      if problem := shape_mismatch(want, have, f"{path}{name}/"):
        return problem
    elif tuple(np.shape(have)) != tuple(want.shape):
      return f"{path}{name} has shape {list(np.shape(have))}, expected {list(want.shape)}"
  return None


def _copy_tokenizer(source: pathlib.Path, target: pathlib.Path) -> None:
  target.mkdir(parents=True)
  for path in sorted(source.iterdir()):
    if path.is_file() and path.suffix not in _WEIGHT_SUFFIXES:
      shutil.copy2(path, target / path.name)
  if not (target / "tokenizer.json").is_file():
    raise UserError(f"{source} has no tokenizer.json; a bundle needs the text tower's tokenizer")


def check_output(output: str | pathlib.Path, overwrite: bool) -> pathlib.Path:
  """Fails early if `output` exists and may not be replaced."""
  output = pathlib.Path(output)
  if output.exists() and not overwrite:
    raise UserError(f"{output} exists; choose another --output or pass --overwrite")
  return output


def write(
  output: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  variables: dict[str, Any],
  *,
  source: dict[str, Any],
  tokenizer_dir: str | pathlib.Path,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a bundle atomically (into a temporary directory renamed when complete).

  `config` is an inference config; its tokenizer (and a BERT tower's config.json) is copied from
  `tokenizer_dir`. With dtype bfloat16 the parameters are stored in bfloat16 (half the size);
  batch statistics and constants stay float32.
  """
  output = check_output(output, overwrite)
  tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
  tmp.mkdir(parents=True)
  try:
    _copy_tokenizer(pathlib.Path(tokenizer_dir), tmp / TOKENIZER_DIR)
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.tokenizer_dir = TOKENIZER_DIR  # Relative to the bundle.
    if config.model.text.kind == "bert":
      config.model.text.pretrained_dir = TOKENIZER_DIR
    if config.train.dtype == "bfloat16":
      variables = _params_to_bfloat16(variables)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp / VARIABLES_DIR).absolute(), variables)
    checkpointer.wait_until_finished()
    meta = {
      "format": FORMAT,
      "version": VERSION,
      "mclap_version": mclap.__version__,
      "id": uuid.uuid4().hex,
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "source": source,
      "dtype": config.train.dtype,
      "config": json.loads(config.to_json()),
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(meta, indent=1))
    if output.exists():
      shutil.rmtree(output)
    tmp.rename(output)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return output


def _params_to_bfloat16(variables: dict[str, Any]) -> dict[str, Any]:
  """Floating-point parameters in bfloat16; batch-norm statistics (`mean`, `var`) and scalars kept."""

  def cast(path, x):
    name = str(path[-1].key)
    keep = x.ndim == 0 or name in ("mean", "var") or not np.issubdtype(x.dtype, np.floating)
    return x if keep else np.asarray(jnp.asarray(x, jnp.bfloat16))

  return jax.tree_util.tree_map_with_path(cast, variables)


def read_meta(directory: str | pathlib.Path) -> dict[str, Any]:
  """bundle.json of a bundle, checked; its config's directories made absolute."""
  directory = pathlib.Path(directory)
  path = directory / BUNDLE_FILE
  if not path.is_file():
    raise BundleError(f"{path} not found: {directory} is not an mclap bundle (make one with python -m mclap.export)")
  try:
    meta = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise BundleError(f"{path} is not valid JSON ({e}); export the bundle again") from e
  if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
    raise BundleError(f"{path} is not an mclap bundle description (format {meta.get('format')!r})")
  if meta["version"] > VERSION:
    raise BundleError(
      f"{directory} is a version {meta['version']} bundle; this mclap ({mclap.__version__}) reads up to version "
      f"{VERSION}: upgrade mclap"
    )
  config = ml_collections.ConfigDict(meta["config"])
  config.data.mel = mel_lib.complete(config.data.mel.to_dict())
  config.data.tokenizer_dir = str(directory.absolute() / config.data.tokenizer_dir)
  if config.model.text.kind == "bert":
    config.model.text.pretrained_dir = str(directory.absolute() / config.model.text.pretrained_dir)
  meta["config"] = config
  return meta


def read(directory: str | pathlib.Path) -> tuple[dict[str, Any], nnx.Module]:
  """(bundle.json, the model with the bundle's variables on the default device)."""
  directory = pathlib.Path(directory)
  meta = read_meta(directory)
  model = abstract_model(meta["config"])
  graphdef, state = nnx.split(model)
  path = (directory / VARIABLES_DIR).absolute()
  try:
    saved = ocp.StandardCheckpointer().metadata(path).item_metadata
    variables = ocp.StandardCheckpointer().restore(path, checkpoints.on_first_device(saved))
  except Exception as e:  # Orbax and TensorStore report damage in types of their own.
    raise BundleError(f"cannot read the variables of {directory} ({type(e).__name__}: {e}); export it again") from e
  if problem := shape_mismatch(state.to_pure_dict(), variables):
    raise BundleError(f"{directory}: the variables do not fit the model its bundle.json describes ({problem})")
  state.replace_by_pure_dict(variables)
  return meta, nnx.merge(graphdef, state)
