"""Evaluators, selected from `config.evals`: each entry `name: settings` runs the module
`settings.kind` (default: the name itself) as `run(context, settings) -> dict`, and its
`table(results) -> str` prints it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mclap import trainer
from mclap.data import pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.evaluators import retrieval, tagging, zero_shot


@dataclasses.dataclass
class EvalContext:
  """What evaluators share: the config, the restored model, split embeddings (computed once per
  corpus and split) and text embedding."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  embed: Callable
  state: Any
  embed_text_fn: Callable | None = None
  _cache: dict = dataclasses.field(default_factory=dict)

  def corpus_config(self, corpus_dir: str = "") -> ml_collections.ConfigDict:
    """The config reading `corpus_dir` ("" = the training corpus, `data.dir`)."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.data.dir = corpus_dir or self.config.data.dir
    return config

  def info(self, corpus_dir: str = "") -> dict[str, Any]:
    return records.read_info(corpus_dir or self.config.data.dir)

  def embeddings(self, split: str, corpus_dir: str = "", with_text: bool = True) -> dict[str, np.ndarray]:
    """Audio embeddings (central crop), labels and multi-hot tags of every record of `split`, in
    order, with the first caption's text embedding when `with_text`."""
    key = (corpus_dir or self.config.data.dir, split, with_text)
    if key not in self._cache:
      ds = pipeline.eval_dataset(
        self.corpus_config(corpus_dir),
        split,
        with_text=with_text,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      self._cache[key] = trainer.embed_dataset(self.embed, self.state, ds, self.mesh)
    return self._cache[key]

  def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalised joint-space embeddings `[len(texts), dim]` of arbitrary texts (prompts)."""
    tokenizer = tokenizer_lib.for_config(self.config)
    out = []
    for start in range(0, len(texts), batch_size):
      chunk = texts[start : start + batch_size]
      tokens, mask = tokenizer(chunk + [""] * (batch_size - len(chunk)))  # One shape: one compilation.
      out.append(np.asarray(self.embed_text_fn(self.state, tokens, mask))[: len(chunk)])
    return np.concatenate(out)


REGISTRY = {"retrieval": retrieval, "zero_shot": zero_shot, "tagging": tagging}


def module_of(name: str, settings) -> Any:
  return REGISTRY.get(settings.get("kind", name))
