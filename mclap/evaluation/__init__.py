"""Evaluators, selected from `config.evals`: each entry `name: settings` runs the module
`settings.kind` (default: the name itself) as `run(context, settings) -> dict`, and its
`table(results) -> str` prints it. Plots go to `context.out_dir`, named in the results' `plots`.
`mclap.eval` runs them on a workdir's checkpoint or a bundle; training runs those with
`settings.every > 0` every that many steps, and those with -1 at each validation
(`mclap.train.periodic_evals`)."""

from __future__ import annotations

from typing import Any

import ml_collections

from mclap.data import pipeline, records
from mclap.errors import ConfigError
from mclap.evaluation import analysis, fewshot, geometry, retrieval, tagging, tsne, zero_shot
from mclap.evaluation.context import SPACES, EvalContext, NotApplicable

__all__ = ["REGISTRY", "SPACES", "EvalContext", "NotApplicable", "module_of", "run", "scalars", "select"]

REGISTRY = {m.__name__.rsplit(".", 1)[1]: m for m in (retrieval, zero_shot, tagging, fewshot, analysis, tsne, geometry)}


def module_of(name: str, settings) -> Any:
  return REGISTRY.get(settings.get("kind", name))


def select(config: ml_collections.ConfigDict, names: list[str]) -> dict[str, Any]:
  """The evaluator module of each name, after checking what each will read (its corpus, that
  corpus's mel settings, its splits): mistakes are reported before any model is built."""
  if unknown := [n for n in names if n not in config.evals]:
    raise ConfigError(f"unknown evaluator(s) {unknown}; config.evals has {list(config.evals.keys())}")
  modules = {n: module_of(n, config.evals[n]) for n in names}
  if bad := [n for n, m in modules.items() if m is None]:
    raise ConfigError(f"config.evals {bad}: no evaluator of that kind; set kind to one of {list(REGISTRY)}")
  infos = {}  # Evaluators mostly share the training corpus: read and check each corpus once.
  for name in names:
    settings = config.evals[name]
    corpus = settings.get("dir", "") or config.data.dir
    if corpus not in infos:
      infos[corpus] = records.read_info(corpus)
      pipeline.check_corpus(infos[corpus], config, corpus)
      if warning := _cut_warning(config, infos[corpus], corpus):
        print(warning, flush=True)
    have = sorted(infos[corpus].get("splits", {}))
    for key, split in settings.items():
      if key.endswith("split") and split not in have:
        raise ConfigError(
          f"config.evals.{name}.{key} is '{split}', not a split of {corpus} (it has: {have}); "
          f"set --config.evals.{name}.{key}"
        )
  return modules


def _cut_warning(config: ml_collections.ConfigDict, info: dict[str, Any], corpus: str) -> str:
  """What differs (if anything) between how a model cuts clips from the waveform (imported
  models: `data.crop` "waveform" or "fusion", `data.pad`) and how the corpus was prepared."""
  rule = config.data.get("crop", "mel")
  if rule not in ("waveform", "fusion"):
    return ""
  pad, fused = config.data.get("pad", "zeros"), rule == "fusion"
  fix = f"--waveform_crop_seconds {config.data.crop_seconds:g} --waveform_pad {pad}" + (
    " --waveform_keep_longer" if fused else ""
  )
  if not info.get("waveform_crop_seconds"):
    differs = (
      "pads shorter files in the waveform, as its original does, but {corpus} holds whole-file log-mels, so shorter "
      "clips are padded with silence after the log-mel"
      if fused
      else "cuts clips from the waveform before the log-mel, as its original does, but {corpus} holds whole-file "
      "log-mels, so evaluation crops the log-mel: clips of another length than the crop embed slightly otherwise "
      "than in the original"
    )
    fixed = f"a corpus prepared with {fix} gives the original's clips"
    return f"warning: the model {differs.format(corpus=corpus)}; {fixed}"
  if info.get("waveform_pad", "zeros") != pad:
    return f"warning: {corpus} pads short clips with {info.get('waveform_pad', 'zeros')}, the model with {pad}: {fix}"
  if info.get("waveform_keep_longer", False) != fused:
    seconds = f"{config.data.crop_seconds:g} s"
    differs = (
      f"holds only the central {seconds} of longer files, so the fused model's view of the whole clip sees no more"
      if fused
      else f"keeps files longer than {seconds} whole (a fused model's input), so evaluation crops their log-mel"
    )
    return f"warning: {corpus} {differs}: {fix}"
  return ""


def run(context: EvalContext, modules: dict[str, Any], on_result=None) -> dict[str, dict]:
  """Runs each selected evaluator; one that cannot run on this data is skipped with a warning
  (the others still run). `on_result(name, result)` is called as each finishes."""
  results = {}
  for name, module in modules.items():
    try:
      results[name] = module.run(context, context.config.evals[name])
    except NotApplicable as e:
      print(f"warning: skipped evaluator {name}: {e}", flush=True)
      continue
    if on_result is not None:
      on_result(name, results[name])
  return results


def scalars(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
  """The numbers of nested results, flattened to `name/key/...` (for metrics logs)."""
  out = {}
  for key, value in results.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(scalars(value, f"{name}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[name] = float(value)
  return out
