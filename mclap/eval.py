"""Evaluate: `python -m mclap.eval --config configs/X.py[:arg] --workdir W [--step N | --best] [--evals a,b]`.

Runs the evaluators named in `config.evals` (or `--evals`) on a checkpoint of W and writes
`W/eval/<name>.json`, their plots (PNG), and `W/eval/report.md`: every table and plot of the run.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
from absl import flags

from mclap import checkpoints, cli, evaluators, parallel, trainer
from mclap.data import pipeline, records
from mclap.errors import ConfigError


def restore_for_eval(config, workdir: pathlib.Path, step: int | None, best: bool):
  """The model definition and the state of the chosen checkpoint, replicated over the mesh. The
  checkpoint is found before the model is built, and nothing is created in `workdir`."""
  directory = pathlib.Path(workdir) / ("best" if best else "checkpoints")
  mgr = checkpoints.manager(directory, None, create=False) if directory.is_dir() else None
  available = list(mgr.all_steps()) if mgr else []
  if not available:
    raise ConfigError(f"no checkpoints in {directory}; train first with python -m mclap.train --workdir {workdir}")
  step = available[-1] if step is None else step
  if step not in available:
    raise ConfigError(f"no checkpoint for step {step} in {directory}; available: {available}")
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_sizes(mesh, **{"data.eval_batch_size": config.data.eval_batch_size})
  tx = trainer.make_optimizer(config, total_steps=1)  # Only its state's structure matters here.
  model_def, state = trainer.init_state(config, mesh, tx)
  state = checkpoints.restore(mgr, step, state)
  mgr.close()
  return mesh, model_def, state, step


def check_evaluators(config, names: list[str]) -> dict[str, Any]:
  """The evaluator module of each name, after checking what each will read (its corpus, that
  corpus's mel settings, its splits): mistakes are reported before the model is built."""
  if unknown := [n for n in names if n not in config.evals]:
    raise ConfigError(f"unknown evaluator(s) {unknown}; config.evals has {list(config.evals.keys())}")
  modules = {n: evaluators.module_of(n, config.evals[n]) for n in names}
  if bad := [n for n, m in modules.items() if m is None]:
    raise ConfigError(f"config.evals {bad}: no evaluator of that kind; set kind to one of {list(evaluators.REGISTRY)}")
  infos = {}  # Evaluators mostly share the training corpus: read and check each corpus once.
  for name in names:
    settings = config.evals[name]
    corpus = settings.get("dir", "") or config.data.dir
    if corpus not in infos:
      infos[corpus] = records.read_info(corpus)
      pipeline.check_corpus(infos[corpus], config, corpus)
    have = sorted(infos[corpus].get("splits", {}))
    for key, split in settings.items():
      if key.endswith("split") and split not in have:
        raise ConfigError(
          f"config.evals.{name}.{key} is '{split}', not a split of {corpus} (it has: {have}); "
          f"set --config.evals.{name}.{key}"
        )
  return modules


def evaluate(config, workdir, step: int | None = None, best: bool = False, names=None) -> dict[str, dict]:
  workdir = pathlib.Path(workdir)
  out = workdir / "eval"
  which = "best checkpoint" if best else ("latest checkpoint" if step is None else "checkpoint")
  names = list(names or config.evals.keys())
  modules = check_evaluators(config, names)
  mesh, model_def, state, step = restore_for_eval(config, workdir, step, best)
  context = evaluators.EvalContext(
    config, mesh, trainer.make_embed_fn(model_def), state, trainer.make_text_embed_fn(model_def), out_dir=out
  )
  results, tables = {}, {}
  for name in names:
    try:
      results[name] = {"step": step, **modules[name].run(context, config.evals[name])}
    except evaluators.NotApplicable as e:  # One evaluator that cannot run on this data; the others can.
      print(f"warning: skipped evaluator {name}: {e}", flush=True)
      continue
    if jax.process_index() == 0:
      tables[name] = modules[name].table(results[name])
      out.mkdir(exist_ok=True)
      (out / f"{name}.json").write_text(json.dumps(results[name], indent=1))
      (out / REPORT).write_text(
        report(workdir, f"{which} (step {step})", config, results, tables)
      )  # Kept current as evaluators finish.
      print(tables[name], flush=True)
  return results


REPORT = "report.md"


def report(workdir: pathlib.Path, checkpoint: str, config, results: dict[str, dict], tables: dict[str, str]) -> str:
  """Markdown: what was evaluated, then per evaluator its table and plots (linked by file name)."""
  lines = [
    f"# Evaluation of `{workdir}`",
    "",
    f"- checkpoint: {checkpoint}",
    f"- training corpus: `{config.data.dir}`; audio tower `{config.model.audio.kind}`, text tower "
    f"`{config.model.text.kind}`, loss `{config.loss.name}`",
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
  evaluate(f.config, f.workdir, f.step, f.best, f.evals)


if __name__ == "__main__":  # Flags are defined here so that evaluate() can be imported beside other jobs.
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_bool("best", False, "Evaluate the checkpoint with the best validation R@10.")
  flags.DEFINE_list("evals", None, "Evaluators to run (default: all in config.evals).")
  cli.run(main)
