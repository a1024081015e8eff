"""Export: `python -m mclap.export --workdir W --output B [--step N | --best] [--dtype bfloat16]`.

Writes an inference bundle (`mclap.serve.bundle`) of a training workdir's checkpoint: the embedding
model's variables, its config (from `W/config.json`), tokenizer files and mel settings. Load it
with `mclap.load(B)`, or use it with `python -m mclap.embed` and `python -m mclap.search`.
"""

from __future__ import annotations

import pathlib

from absl import flags

from mclap import cli
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.models import weights
from mclap.serve import bundle


def export(
  workdir: str | pathlib.Path,
  output: str | pathlib.Path,
  *,
  step: int | None = None,
  best: bool = False,
  dtype: str = "float32",
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes the bundle of a checkpoint of `workdir`; returns its directory."""
  workdir = pathlib.Path(workdir)
  bundle.check_output(output, overwrite)
  if dtype not in bundle.DTYPE_NAMES:  # Before the slow part.
    raise UserError(f"--dtype={dtype}; use {' or '.join(bundle.DTYPES)}")
  model, spec, config, step = weights.read_model(workdir, step, best)
  spec = bundle.inference_spec(spec, dtype)
  source = {"workdir": str(workdir.absolute()), "step": step, "best": best}
  out = bundle.write(
    output,
    config,
    spec,
    bundle.variables_of(model),
    source=source,
    tokenizer_dir=tokenizer_lib.for_config(config).directory,
    overwrite=overwrite,
  )
  print(f"exported step {step} of {workdir} to {out} ({spec.dtype}); load it with mclap.load({str(out)!r})")
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  export(f.workdir, f.output, step=f.step, best=f.best, dtype=f.dtype, overwrite=f.overwrite)


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).", required=True)
  flags.DEFINE_string("output", None, "Bundle directory to write.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("best", False, "Export the checkpoint with the best validation R@10.")
  flags.DEFINE_enum("dtype", "float32", list(bundle.DTYPE_NAMES), "Parameters and compute dtype (bf16 = bfloat16).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --output.")
  cli.run(main)
