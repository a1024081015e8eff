"""Inference bundles: a model's variables with everything needed to use it, and nothing else.

A bundle is a directory:

```
B/bundle.json   format, version, mclap version, where the weights came from, dtype, the model spec
                that rebuilds the model, and the data settings it reads (mel or features, crop,
                token length)
B/variables/    Orbax checkpoint of the model's variables (parameters, batch statistics, constants)
B/tokenizer/    tokenizer files (and a BERT tower's config.json), no weights
```

A bundle holds the dual encoder only: what an objective trained beside it stays in the training
workdir. Loading reads nothing outside the bundle, so it can be copied anywhere. Version 1
bundles (before the spec was stored) load too: their spec is derived from their config.
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
from mclap import paths
from mclap.data import features as features_lib
from mclap.data import mel as mel_lib
from mclap.errors import UserError, first_line
from mclap.models import DualEncoder, ModelSpec, build_model, spec_from_config, weights

FORMAT, VERSION = "mclap.bundle", 2
BUNDLE_FILE, VARIABLES_DIR, TOKENIZER_DIR = weights.BUNDLE_META, weights.BUNDLE_VARIABLES, "tokenizer"
DTYPES = ("float32", "bfloat16")
DTYPE_NAMES = {"float32": "float32", "f32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}  # Short names too.
# Tokenizer directories can hold a model's weights too; the bundle has its own.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt")


class BundleError(UserError):
  """A bundle directory is missing, incomplete, or of another format version."""


def inference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data settings of a training config that inference reads: mel (or the precomputed
  features a features tower reads), crop, token length and tokenizer."""
  c = ml_collections.ConfigDict()
  c.data = {k: config.data[k] for k in ("crop_seconds", "eval_crops", "max_tokens", "tokenizer_dir")}
  c.data.crop = config.data.get("crop", "mel")  # Where inference crops: see `inference.Model.mel_crops`.
  c.data.pad = config.data.get("pad", "zeros")  # How it pads waveforms shorter than a crop (the same).
  if "features" in config.data:
    c.data.features = features_lib.check_config(config.data.features)
  else:
    c.data.mel = mel_lib.complete(config.data.mel.to_dict())
  return c


def inference_spec(spec: ModelSpec, dtype: str = "float32") -> ModelSpec:
  """The spec of a trained model for inference: computing in `dtype`, nothing recomputed."""
  if dtype not in DTYPE_NAMES:
    raise UserError(f"dtype {dtype!r}; use {' or '.join(DTYPES)}")
  return spec.replace(dtype=DTYPE_NAMES[dtype], remat="none")


def abstract_model(spec: ModelSpec) -> DualEncoder:
  """The model of a spec, with shapes but no values (nothing is computed)."""
  return nnx.eval_shape(lambda: build_model(spec, nnx.Rngs(0)))


def abstract_variables(spec: ModelSpec) -> dict[str, Any]:
  """The variables of the model of `spec`: nested dict of shape/dtype structs."""
  return nnx.state(abstract_model(spec)).to_pure_dict()


def variables_of(model: DualEncoder) -> dict[str, Any]:
  """The values of `model`'s variables, as host numpy arrays in a nested dict."""
  return jax.tree.map(np.asarray, jax.device_get(nnx.state(model).to_pure_dict()))


def _copy_tokenizer(source: pathlib.Path, target: pathlib.Path) -> None:
  target.mkdir(parents=True)
  for path in sorted(source.iterdir()):
    if path.is_file() and path.suffix not in _WEIGHT_SUFFIXES:
      shutil.copy2(path, target / path.name)
  if not (target / "tokenizer.json").is_file():
    raise UserError(f"{source} has no tokenizer.json; a bundle needs the text tower's tokenizer")


def check_output(output: str | pathlib.Path, overwrite: bool) -> pathlib.Path:
  """Fails early if `output` exists and may not be replaced: `overwrite` replaces a bundle, never
  another folder (a slip naming the training workdir deleted its checkpoints)."""
  output = pathlib.Path(output)
  paths.check_not_file(output, "--output", weights.is_bundle)
  if output.exists() and not overwrite:
    raise UserError(f"{output} exists; choose another --output or pass --overwrite")
  # A damaged bundle (its bundle.json left) is still one to replace.
  if output.exists() and not (output / BUNDLE_FILE).is_file() and (held := sorted(p.name for p in output.iterdir())):
    raise UserError(
      f"{output} is not a bundle (it holds {paths.few(held)}); --overwrite replaces a bundle only: choose another "
      "--output"
    )
  return output


def write(
  output: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  spec: ModelSpec,
  variables: dict[str, Any],
  *,
  source: dict[str, Any],
  tokenizer_dir: str | pathlib.Path,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes a bundle atomically (into a temporary directory renamed when complete).

  `config` holds the data settings (`inference_config`); the tokenizer (and a BERT tower's
  config.json) is copied from `tokenizer_dir`. With `spec.dtype` bfloat16 the parameters are stored
  in bfloat16 (half the size); batch statistics and constants stay float32.
  """
  output = check_output(output, overwrite)
  tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
  tmp.mkdir(parents=True)
  try:
    _copy_tokenizer(pathlib.Path(tokenizer_dir), tmp / TOKENIZER_DIR)
    config = inference_config(config)
    config.data.tokenizer_dir = TOKENIZER_DIR  # Relative to the bundle.
    if spec.dtype == "bfloat16":
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
      "dtype": spec.dtype,
      "spec": spec.to_dict(),
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
  """bundle.json of a bundle, checked; its config's directories made absolute and its `spec` a
  `ModelSpec`."""
  directory = pathlib.Path(directory)
  path = directory / BUNDLE_FILE
  if not path.is_file():
    what = f"an mclap bundle (no {BUNDLE_FILE} in it)"
    raise BundleError(paths.not_found(directory, what, weights.is_bundle, "make one with python -m mclap.export"))
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
  if "mel" in config.data:
    config.data.mel = mel_lib.complete(config.data.mel.to_dict())
  config.data.tokenizer_dir = str(directory.absolute() / config.data.tokenizer_dir)
  if "spec" in meta:
    meta["spec"] = ModelSpec.from_dict(meta["spec"], where=str(path))
  else:  # Version 1: the training config's model section, BERT directories relative to the bundle.
    if config.model.text.kind == "bert":
      config.model.text.pretrained_dir = str(directory.absolute() / config.model.text.pretrained_dir)
    meta["spec"] = spec_from_config(config)
  meta["config"] = config
  return meta


def read(directory: str | pathlib.Path) -> tuple[dict[str, Any], DualEncoder]:
  """(bundle.json, the model with the bundle's variables on the default device)."""
  directory = pathlib.Path(directory)
  meta = read_meta(directory)
  model = abstract_model(meta["spec"])
  graphdef, state = nnx.split(model)
  try:
    variables = weights.read_arrays(directory / VARIABLES_DIR)
  except Exception as e:  # Orbax and TensorStore report damage in types of their own.
    problem = f"{type(e).__name__}: {first_line(e)}"
    raise BundleError(f"cannot read the variables of {directory} ({problem}); export or import it again") from e
  if problem := weights.shape_difference(weights.flat_shapes(state.to_pure_dict()), weights.flat_shapes(variables)):
    raise BundleError(f"{directory}: the variables do not fit the model its bundle.json describes ({problem})")
  state.replace_by_pure_dict(variables)
  return meta, nnx.merge(graphdef, state)
