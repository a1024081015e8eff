"""Evaluators, selected by name from `config.evals`; each is `run(context, settings) -> dict`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mclap import trainer
from mclap.data import pipeline
from mclap.evaluators import retrieval


@dataclasses.dataclass
class EvalContext:
  """What evaluators share: the config, the restored model, and split embeddings (computed once)."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  embed: Callable
  state: Any
  _cache: dict = dataclasses.field(default_factory=dict)

  def embeddings(self, split: str) -> dict[str, np.ndarray]:
    """Audio (central crop) and first-caption text embeddings of every record of `split`, in order."""
    if split not in self._cache:
      ds = pipeline.eval_dataset(
        self.config, split, process_index=jax.process_index(), process_count=jax.process_count()
      )
      self._cache[split] = trainer.embed_dataset(self.embed, self.state, ds, self.mesh)
    return self._cache[split]


REGISTRY = {"retrieval": retrieval}
