"""Evaluate: `python -m mclap.eval [--config C] (--workdir W [--step N | --best] | --bundle B) [--evals a,b]`.

Runs the evaluators named in `config.evals` (or `--evals`) on a checkpoint of a training workdir,
or on an inference bundle (exported, or imported from MusCALL), and writes `<out>/<name>.json`,
their plots (PNG) and `<out>/report.md`: every table and plot of the run (`<out>`: `W/eval`, or
`--output`, default `B/eval`). The corpora and evaluators come from `--config` (for a workdir, by
default the config it was trained with, `W/config.json`); the model, its mel settings, crop length
and tokenizer from the checkpoint or the bundle.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
from absl import flags

from mclap import cli, evaluation, parallel, paths
from mclap.data import records
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError, UserError
from mclap.models import DualEncoder, ModelSpec, weights
from mclap.models import spec as spec_lib
from mclap.models.embedder import Embedder
from mclap.serve import bundle as bundle_lib

# What a bundle fixes about the data its model reads (and its input: mel or features).
_BUNDLE_DATA = ("crop_seconds", "max_tokens", "tokenizer_dir")


def _check_fits(spec: ModelSpec, config: ml_collections.ConfigDict, source: str) -> None:
  """The config's crops and tokens must be those the model was built for."""
  rows, frames = spec_lib.input_shape(config)
  if (rows, frames) != (spec.n_mels, spec.crop_frames):
    what, unit = ("features", "features") if "features" in config.data else ("mel", "mels")
    raise ConfigError(
      f"{source} takes {spec.n_mels}-{unit.rstrip('s')} crops of {spec.crop_frames} frames, the config gives {rows} "
      f"{unit}, {frames} frames; set config.data.{what} and config.data.crop_seconds to those it was trained with"
    )
  tokens = tokenizer_lib.for_config(config)
  if tokens.vocab_size != spec.text["vocab_size"] or config.data.max_tokens > spec.max_tokens:
    raise ConfigError(
      f"{source} reads up to {spec.max_tokens} tokens of a {spec.text['vocab_size']}-token vocabulary, the config "
      f"gives {config.data.max_tokens} of {tokens.vocab_size}; set config.data.tokenizer_dir and "
      "config.data.max_tokens to those it was trained with"
    )


def _towers(spec: ModelSpec) -> str:
  return f"audio tower `{spec.audio['kind']}`, text tower `{spec.text['kind']}`"


def with_bundle_data(config: ml_collections.ConfigDict, bundle: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`config` reading its corpora as the bundle's model does (mel or features, crop length, tokens)."""
  meta = bundle_lib.read_meta(bundle)
  config = ml_collections.ConfigDict(config.to_dict())
  field = records.input_field(meta["config"].data)
  for key in (*_BUNDLE_DATA, field):
    config.data[key] = meta["config"].data[key]
  for other in set(records.INPUT_FIELDS) - {field}:
    if other in config.data:
      del config.data[other]
  config.data.crop = meta["config"].data.get("crop", "mel")
  config.data.pad = meta["config"].data.get("pad", "zeros")
  return config


def load(config, workdir=None, bundle=None, step: int | None = None, best: bool = False):
  """(model, description of what was loaded, step or None) of a workdir's checkpoint or a bundle,
  exactly one of them; `config` must already read the corpora as the model does (for a bundle:
  `with_bundle_data`)."""
  if workdir is not None:
    which = "best checkpoint" if best else ("latest checkpoint" if step is None else "checkpoint")
    fits = lambda spec, step: _check_fits(spec, config, f"the checkpoint of step {step} in {workdir}")  # noqa: E731
    model, spec, _, step = weights.read_model(workdir, step, best, check=fits)
    return model, f"{which} (step {step}); {_towers(spec)}", step
  meta, model = bundle_lib.read(bundle)
  return model, f"bundle ({meta['source']}); {_towers(meta['spec'])}", None


def evaluate(
  config, workdir=None, step: int | None = None, best: bool = False, names=None, bundle=None, output=None
) -> dict[str, dict]:
  if (workdir is None) == (bundle is None):
    raise UserError("evaluate a training workdir (--workdir) or a bundle (--bundle), one of them")
  out = pathlib.Path(output or pathlib.Path(workdir or bundle) / "eval")
  paths.check_not_file(out, "--output")
  # The report and each evaluator's numbers and plots are written over: not in a folder of other files.
  if others := paths.other_names(out, lambda name: name == REPORT or name.endswith((".json", ".png"))):
    raise UserError(
      f"--output {out} holds files an evaluation does not write ({paths.few(others)}); give a new or empty folder"
    )
  if config is None and bundle is not None:
    raise UserError(
      "evaluating a bundle needs --config FILE for the corpora and evaluators (a bundle holds the model only), "
      "e.g. --config configs/muscall.py --config.data.dir=DIR"
    )
  config = weights.workdir_config(workdir) if config is None else config  # The run's own corpus and evaluators.
  if bundle is not None:
    config = with_bundle_data(config, bundle)
  names = list(names or config.evals.keys())
  modules = evaluation.select(config, names)  # Mistakes in the evaluators' settings before the model.
  model, which, step = load(config, workdir, bundle, step, best)
  context = make_context(config, model, out, show_progress=True)
  tables, results = {}, {}

  def write(name: str, result: dict) -> None:
    results[name] = {"step": step, **result} if step is not None else result
    if jax.process_index() == 0:
      tables[name] = modules[name].table(results[name])
      out.mkdir(parents=True, exist_ok=True)
      (out / f"{name}.json").write_text(json.dumps(results[name], indent=1))
      (out / REPORT).write_text(report(workdir or bundle, which, config, results, tables))  # Current as each finishes.
      print(tables[name], flush=True)

  evaluation.run(context, modules, write)
  if not results:
    raise UserError(f"none of the evaluators {names} can run on {config.data.dir}: see the warnings above")
  return results


def make_context(
  config, model: DualEncoder, out: pathlib.Path | None = None, show_progress: bool = False
) -> evaluation.EvalContext:
  """What the evaluators get: the model embedding through an `Embedder` over the config's mesh."""
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_sizes(mesh, **{"data.eval_batch_size": config.data.eval_batch_size})
  embedder, state = Embedder.for_model(model, mesh, config.data.eval_batch_size, config.data.token_bucket)
  return evaluation.EvalContext(config, embedder, state, out_dir=out, show_progress=show_progress)


REPORT = "report.md"


def report(source: pathlib.Path, which: str, config, results: dict[str, dict], tables: dict[str, str]) -> str:
  """Markdown: what was evaluated, then per evaluator its table and plots (linked by file name)."""
  lines = [
    f"# Evaluation of `{source}`",
    "",
    f"- model: {which}",
    f"- corpus: `{config.data.dir}`",
    f"- evaluation crops: {'central crop' if config.data.eval_crops == 1 else f'mean of {config.data.eval_crops}'}",
    "",
  ]
  for name, table in tables.items():
    lines += [f"## {name}", "", "```text", table, "```", ""]
    lines += [f"![{name}: {plot}]({plot})" for plot in results[name].get("plots", [])]
    lines += [f"Numbers: [`{name}.json`]({name}.json)", ""]
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  evaluate(f.config, f.workdir, f.step, f.best, f.evals, bundle=f.bundle, output=f.output)


if __name__ == "__main__":  # Flags are defined here so that evaluate() can be imported beside other jobs.
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  flags.DEFINE_string("bundle", None, "Inference bundle (mclap.export, or the MusCALL import) to evaluate instead.")
  flags.DEFINE_string("output", None, "Directory for the results (default: W/eval or B/eval).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_bool("best", False, "Evaluate the checkpoint with the best validation R@10.")
  flags.DEFINE_list("evals", None, "Evaluators to run (default: all in config.evals).")
  cli.run(main)
