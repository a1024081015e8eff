"""Evaluators, selected from `config.evals`: each entry `name: settings` runs the module
`settings.kind` (default: the name itself) as `run(context, settings) -> dict`, and its
`table(results) -> str` prints it. Plots go to `context.out_dir`, named in the results' `plots`."""

from __future__ import annotations

from typing import Any

from mclap.evaluators import analysis, fewshot, retrieval, tagging, tsne, zero_shot
from mclap.evaluators.context import SPACES, EvalContext, NotApplicable

__all__ = ["REGISTRY", "SPACES", "EvalContext", "NotApplicable", "module_of"]

REGISTRY = {m.__name__.rsplit(".", 1)[1]: m for m in (retrieval, zero_shot, tagging, fewshot, analysis, tsne)}


def module_of(name: str, settings) -> Any:
  return REGISTRY.get(settings.get("kind", name))
