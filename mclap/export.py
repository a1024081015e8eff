"""Export: `python -m mclap.export --workdir W --output B [--step N | --best | --average_last K] [--dtype bfloat16]`.

Writes an inference bundle (`mclap.serve.bundle`) of a training workdir's checkpoint: the embedding
model's variables, its config (from `W/config.json`), tokenizer files and mel settings; or of the
average of its last K checkpoints (weight averaging: parameters and batch-norm statistics alike).
Load it with `mclap.load(B)`, or use it with `python -m mclap.embed` and `python -m mclap.search`.
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
  average_last: int = 0,
  dtype: str = "float32",
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes the bundle of a checkpoint of `workdir`, or of the mean of its last `average_last`
  checkpoints; returns its directory."""
  bundle.check_output(output, overwrite)
  workdir = weights.check_workdir(workdir)
  if dtype not in bundle.DTYPE_NAMES:  # Before the slow part.
    raise UserError(f"--dtype={dtype}; use {' or '.join(bundle.DTYPES)}")
  steps = [step]
  if average_last:
    if step is not None or best:
      raise UserError("--average_last averages the latest checkpoints; leave out --step and --best")
    steps = weights.checkpoint_steps(workdir / "checkpoints")[-average_last:]
    if len(steps) < average_last:
      raise UserError(f"--average_last={average_last}, but {workdir / 'checkpoints'} holds {len(steps)} checkpoint(s)")
  model, spec, config, step = weights.read_model(workdir, steps[-1], best, average_with=steps[:-1])
  spec = bundle.inference_spec(spec, dtype)
  source = {"workdir": str(workdir.absolute()), "step": step, "best": best}
  if average_last:
    source["averaged_steps"] = steps
  out = bundle.write(
    output,
    config,
    spec,
    bundle.variables_of(model),
    source=source,
    tokenizer_dir=tokenizer_lib.for_config(config).directory,
    overwrite=overwrite,
  )
  what = f"the mean of steps {steps}" if average_last else f"step {step}"
  print(f"exported {what} of {workdir} to {out} ({spec.dtype}); load it with mclap.load({str(out)!r})")
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  export(
    f.workdir,
    f.output,
    step=f.step,
    best=f.best,
    average_last=f.average_last,
    dtype=f.dtype,
    overwrite=f.overwrite,
  )


if __name__ == "__main__":  # Flags defined here: the functions above import beside other jobs.
  flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).", required=True)
  flags.DEFINE_string("output", None, "Bundle directory to write.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("best", False, "Export the checkpoint with the best validation R@10.")
  flags.DEFINE_integer("average_last", 0, "Export the mean of the last K checkpoints (weight averaging).")
  flags.DEFINE_enum("dtype", "float32", list(bundle.DTYPE_NAMES), "Parameters and compute dtype (bf16 = bfloat16).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing bundle at --output (a bundle only).")
  cli.run(main)
