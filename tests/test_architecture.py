"""The import graph points one way, stage by stage: prepare -> data -> models -> objectives ->
training; evaluation and serving read models and data, never training; configs load without JAX."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "mclap"
JOBS = ("mclap.train", "mclap.eval", "mclap.export", "mclap.embed", "mclap.search")
STAGES = ("prepare", "data", "models", "objectives", "training", "evaluation", "serve", "tools")
# Stage -> the stages it may import (besides itself and the shared mclap.errors / parallel / cli /
# config_files). Nothing in the library imports a job (the top-level command modules).
ALLOWED = {
  "data": (),
  "prepare": ("data",),
  "models": ("data",),
  "objectives": ("data", "models"),
  "training": ("data", "models", "objectives"),
  "evaluation": ("data", "models"),
  "serve": ("data", "models"),
  "tools": ("data", "models", "serve"),
}
SHARED = ("mclap.errors", "mclap.parallel", "mclap.cli", "mclap.config_files")


def _imports(path) -> set[str]:
  """The mclap modules a file imports (`from mclap import x` counts as mclap.x)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return {name for name in found if name.startswith("mclap.")}


def _module(path) -> str:
  return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_no_import_points_the_wrong_way():
  wrong = []
  for path in sorted(PACKAGE.rglob("*.py")):
    module = _module(path)
    parts = module.split(".")
    if module in SHARED:
      allowed = ()
    elif len(parts) >= 2 and parts[1] in STAGES:
      allowed = (parts[1], *ALLOWED[parts[1]])
    else:
      continue  # A job (or the package's lazy `mclap.load`): it may use every stage.
    for name in _imports(path):
      stage = name.split(".")[1]
      if name in JOBS or (stage in STAGES and stage not in allowed):
        wrong.append(f"{module} imports {name}")
  assert not wrong, wrong


def test_configs_load_without_jax():
  names = ("muscall.py:demo,ssl", "multipos.py:scl", "generator.py:gan", "siglip.py", "features.py:demo,siglip,multi")
  specs = [f"configs/{name}" for name in names]
  code = (
    "import sys; from mclap.config_files import load_config; "
    f"[load_config(s) for s in {specs!r}]; assert 'jax' not in sys.modules, 'jax imported'"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
