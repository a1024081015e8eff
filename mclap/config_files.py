"""Config files: big_vision-style Python files with `get_config(arg)`, read without JAX (a config
only describes a run; loading one must not start a backend)."""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections

from mclap.errors import ConfigError


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Calls `get_config(arg)` of the file in `spec` = 'path.py[:arg]'."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if file.is_dir():
    names = ", ".join(sorted(p.name for p in file.glob("*.py")))
    raise ConfigError(f"config {path} is a folder; name a config file in it ({names}), e.g. configs/muscall.py:demo")
  if not file.is_file():
    close = difflib.get_close_matches(file.name, [p.name for p in file.parent.glob("*.py")], n=1, cutoff=0.6)
    hint = f"did you mean {file.parent / close[0]}? " if close else ""
    raise ConfigError(f"config file {path} not found ({hint}expected e.g. configs/muscall.py:demo)")
  module_spec = importlib.util.spec_from_file_location(f"_mclap_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg or None) if arg else module.get_config()
  except ValueError as e:  # A config's own check of its argument (an unknown variant).
    raise ConfigError(f"{spec}: {e}") from e


def base_config(
  config_file: str, arg: str | None, own_variants: Sequence[str]
) -> tuple[ml_collections.ConfigDict, set[str]]:
  """For a config built on `configs/muscall.py`: that file's config with the variants of `arg`
  that are not `own_variants` (e.g. `demo`), and the own variants found."""
  variants = set(filter(None, (arg or "").split(",")))
  own = variants & set(own_variants)
  base = pathlib.Path(config_file).with_name("muscall.py")
  return load_config(f"{base}:{','.join(sorted(variants - own))}"), own
