"""Config files: big_vision-style Python files with `get_config(arg)`, read without JAX (a config
only describes a run; loading one must not start a backend)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from mclap import paths
from mclap.errors import ConfigError

CONFIG_FILE = "config.json"  # The config a training workdir keeps (its run's own).


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Calls `get_config(arg)` of the file in `spec` = 'path.py[:arg]'; or reads the `config.json` a
  training workdir keeps (`runs/x/config.json`: the run's own config, to resume or evaluate it with
  overrides on top)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if file.suffix == ".json" and file.is_file():
    try:
      return ml_collections.ConfigDict(from_json(json.loads(file.read_text(encoding="utf-8"))))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConfigError(f"config {path} is not valid JSON ({e}); name a config file such as configs/muscall.py") from e
  if file.is_dir():
    names = ", ".join(sorted(p.name for p in file.glob("*.py")))
    raise ConfigError(f"config {path} is a folder; name a config file in it ({names}), e.g. configs/muscall.py:demo")
  if not file.is_file():
    close = paths.close_file(file, "*.py")
    hint = f"did you mean {close}? " if close else ""
    raise ConfigError(f"config file {path} not found ({hint}expected e.g. configs/muscall.py:demo)")
  module_spec = importlib.util.spec_from_file_location(f"_mclap_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg or None) if arg else module.get_config()
  except ValueError as e:  # A config's own check of its argument (an unknown variant).
    raise ConfigError(f"{spec}: {e}") from e


def from_json(value: Any) -> Any:
  """JSON's lists as the tuples config files write (and `--config.key='(a, b)'` overrides)."""
  if isinstance(value, dict):
    return {k: from_json(v) for k, v in value.items()}
  return tuple(map(from_json, value)) if isinstance(value, list) else value


def base_config(
  config_file: str, arg: str | None, own_variants: Sequence[str]
) -> tuple[ml_collections.ConfigDict, set[str]]:
  """For a config built on `configs/muscall.py`: that file's config with the variants of `arg`
  that are not `own_variants` (e.g. `demo`), and the own variants found."""
  variants = set(filter(None, (arg or "").split(",")))
  own = variants & set(own_variants)
  base = pathlib.Path(config_file).with_name("muscall.py")
  return load_config(f"{base}:{','.join(sorted(variants - own))}"), own
