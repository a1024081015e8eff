"""The import graph points one way: data -> models -> objectives -> training; evaluation and
serving read models and data, never the trainer; configs load without JAX."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "mclap"
TRAINING = ("mclap.train", "mclap.trainer", "mclap.checkpoints", "mclap.guards", "mclap.memory")
# Module (prefix) -> the modules (prefixes) it must not import.
FORBIDDEN = {
  "mclap.data": ("mclap.models", "mclap.objectives", "mclap.embedder", "mclap.evaluators", *TRAINING),
  "mclap.models": ("mclap.objectives", "mclap.weights", "mclap.bundle", "mclap.evaluators", *TRAINING),
  "mclap.objectives": ("mclap.weights", "mclap.evaluators", *TRAINING),
  "mclap.weights": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.embedder": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.evaluators": ("mclap.objectives", "mclap.eval", *TRAINING),
  "mclap.eval": ("mclap.objectives", *TRAINING),
  "mclap.export": ("mclap.objectives", "mclap.eval", *TRAINING),
  "mclap.bundle": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.inference": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.embed": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.search": ("mclap.objectives", "mclap.evaluators", *TRAINING),
  "mclap.tools": ("mclap.objectives", "mclap.evaluators", *TRAINING),
}


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
    rules = [banned for prefix, banned in FORBIDDEN.items() if module == prefix or module.startswith(prefix + ".")]
    for name in _imports(path):
      if any(name == b or name.startswith(b + ".") for banned in rules for b in banned):
        wrong.append(f"{module} imports {name}")
  assert not wrong, wrong


def test_configs_load_without_jax():
  specs = [f"configs/{name}" for name in ("muscall.py:demo,ssl", "multipos.py:scl", "generator.py:gan", "siglip.py")]
  code = (
    "import sys; from mclap.config_files import load_config; "
    f"[load_config(s) for s in {specs!r}]; assert 'jax' not in sys.modules, 'jax imported'"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
