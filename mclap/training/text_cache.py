"""A frozen text tower as a table: its features of every text the corpus can give, computed once.

A frozen encoder is a fixed function of its text, so running it at every step repeats work whose
answer is known; with precomputed audio features it is most of the step. With `train.cache_text`
and `model.text.freeze`, training embeds each distinct text of the training and validation splits
once (`pipeline.corpus_texts`), the pipeline gives each text as one token, its row
(`tokenizer.TextRows`), and the step looks the features up (`look_up`). The objective's frozen
heads (the weighted loss's Sentence-BERT) read the same texts and get tables of their own. What the
step computes is unchanged; evaluators and exported models run the tower itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mclap import objectives, parallel
from mclap.data import tokenizer as tokenizer_lib
from mclap.models.dual_encoder import Constant

# The model's text tower; an objective's frozen heads go by their own names.
TEXT = "text"


def encoders(config: ml_collections.ConfigDict, objective: objectives.Objective) -> tuple[str, ...]:
  """The text encoders training looks up: with `train.cache_text` and a frozen text tower, the tower
  and the objective's frozen heads; none when the tower trains (it needs the tokens)."""
  if not (config.train.cache_text and config.model.text.get("freeze", False)):
    return ()
  return (TEXT, *objective.frozen_heads)


def _modules(trainable, names: Sequence[str]) -> dict[str, nnx.Module]:
  return {name: trainable.model.text if name == TEXT else trainable.heads[name] for name in names}


def tables(
  trainable, names: Sequence[str], texts: Sequence[str], config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, jax.Array]:
  """`{name: features [len(texts), width]}` of each encoder in `names` (of `trainable`, the model
  and heads training starts from), replicated over `mesh`; the texts in batches of
  `data.eval_batch_size`, each process embedding its share."""
  if not names:
    return {}
  began = time.perf_counter()
  _say(f"text cache: {len(texts)} texts through the frozen {', '.join(names)} encoder(s)")
  graphdef, weights = nnx.split(nnx.Dict(_modules(trainable, names)))

  @jax.jit
  def encode(weights, tokens, token_mask):
    modules = nnx.merge(graphdef, weights)
    return {name: modules[name](tokens, token_mask) for name in names}

  tokenizer, batch = tokenizer_lib.for_config(config), config.data.eval_batch_size
  share = batch // jax.process_count()
  parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
  for start in range(0, len(texts), batch):
    chunk = list(texts[start : start + batch])
    padded = chunk + [""] * (batch - len(chunk))
    mine = padded[jax.process_index() * share : (jax.process_index() + 1) * share]
    tokens, token_mask = tokenizer(mine)
    local = {"tokens": tokens, "token_mask": token_mask}
    out = encode(weights, **parallel.to_global(local, mesh, ("tokens", "token_mask")))
    for name, features in multihost_utils.process_allgather(out, tiled=True).items():
      parts[name].append(np.asarray(features)[: len(chunk)])
  sharding = parallel.replicated(mesh)
  found = {}
  for name, chunks in parts.items():
    table = np.concatenate(chunks)
    found[name] = jax.make_array_from_callback(table.shape, sharding, lambda index, table=table: table[index])
  _say(f"text cache: done in {time.perf_counter() - began:.1f} s")
  return found


def _say(line: str) -> None:
  if jax.process_index() == 0:  # As the job's log: process 0 speaks for all.
    print(line, flush=True)


class TextTable(nnx.Module):
  """A text encoder as a lookup: `tokens [batch, 1]` are rows of its table of features."""

  def __init__(self, table: jax.Array):
    self.table = Constant(table)

  def __call__(self, tokens: jax.Array, token_mask: jax.Array) -> jax.Array:
    del token_mask  # Every row is a whole text.
    return self.table[...][tokens[:, 0]]


def look_up(trainable, tables: dict[str, jax.Array]) -> None:
  """Puts the tables in place of their encoders in `trainable` (a copy made for one step)."""
  for name, table in tables.items():
    if name == TEXT:
      trainable.model.text = TextTable(table)
    else:
      trainable.heads[name] = TextTable(table)
