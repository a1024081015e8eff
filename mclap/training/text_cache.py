"""A frozen text tower as a table: its features of every text the corpus can give, computed once.

A frozen encoder is a fixed function of its text, so running it at every step repeats work whose
answer is known; with precomputed audio features it is most of the step. With `train.cache_text`
and `model.text.freeze`, training embeds each distinct text of the training and validation splits
once (`pipeline.corpus_texts`), the pipeline gives each text as one token, its row
(`tokenizer.TextRows`), and the step looks the features up (`look_up`). The objective's frozen
heads (the weighted loss's Sentence-BERT) read the same texts and get tables of their own. What the
step computes is unchanged; evaluators and exported models run the tower itself.

The tables are kept in the workdir (`text_tables.npz`), keyed by everything they are computed
from: the texts, the tokenizer and the encoders' weights. A resumed or re-run job reads them
instead of embedding every text again; any change to those inputs computes them anew.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
import zipfile
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mclap import objectives, parallel
from mclap.data import records
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
  trainable,
  names: Sequence[str],
  texts: Sequence[str],
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  directory: pathlib.Path | None = None,
) -> dict[str, jax.Array]:
  """`{name: features [len(texts), width]}` of each encoder in `names` (of `trainable`, the model
  and heads training starts from), replicated over `mesh`; the texts in batches of
  `data.eval_batch_size`, each process embedding its share. Read from `directory` when a previous
  job kept tables of the same inputs there; else computed and kept there (`None`: not kept)."""
  if not names:
    return {}
  began = time.perf_counter()
  tokenizer, batch = tokenizer_lib.for_config(config), config.data.eval_batch_size
  graphdef, weights = nnx.split(nnx.Dict(_modules(trainable, names)))
  path = directory / "text_tables.npz" if directory else None
  key = _key(names, texts, tokenizer, weights)
  kept = _read(path, key)
  if multihost_utils.process_allgather(np.int32(kept is not None)).all():  # Every process has them.
    _say(f"text cache: {len(texts)} texts' features read from {path}")
    return _replicated(kept, mesh)

  _say(f"text cache: {len(texts)} texts through the frozen {', '.join(names)} encoder(s)")

  @jax.jit
  def encode(weights, tokens, token_mask):
    modules = nnx.merge(graphdef, weights)
    return {name: modules[name](tokens, token_mask) for name in names}

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
  found = {name: np.concatenate(chunks) for name, chunks in parts.items()}
  if path and jax.process_index() == 0:
    _write(path, key, found)
  _say(f"text cache: done in {time.perf_counter() - began:.1f} s")
  return _replicated(found, mesh)


def _key(names: Sequence[str], texts: Sequence[str], tokenizer: tokenizer_lib.TextTokenizer, weights) -> str:
  """A digest of what the tables are computed from (the same on every process)."""
  digest = hashlib.sha256(repr((tuple(names), tokenizer.max_len)).encode())
  digest.update(tokenizer.tokenizer.to_str().encode())
  digest.update("\0".join(texts).encode())
  for path, leaf in jax.tree_util.tree_leaves_with_path(weights):
    value = np.asarray(leaf if leaf.is_fully_addressable else multihost_utils.process_allgather(leaf, tiled=True))
    digest.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def _read(path: pathlib.Path | None, key: str) -> dict[str, np.ndarray] | None:
  """The tables kept at `path` if they were computed from `key`'s inputs."""
  if path is None or not path.exists():
    return None
  try:
    with np.load(path) as kept:
      if str(kept["key"]) != key:
        return None
      return {name[len("table/") :]: kept[name] for name in kept.files if name.startswith("table/")}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # Not a file this module wrote: computed anew.
    return None


def _write(path: pathlib.Path, key: str, found: dict[str, np.ndarray]) -> None:
  """Replaces the tables at `path` whole: a job stopped while writing leaves the previous file or
  none, never a part. A failed write is reported, not fatal."""
  arrays = {"key": np.str_(key), **{f"table/{name}": table for name, table in found.items()}}
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    records.write_atomic(path, lambda f: np.savez(f, **arrays))
  except OSError as e:  # Only a saving for the next start: training goes on without it.
    _say(f"text cache: not kept in {path} ({e.strerror or e}); the next start embeds the texts again")


def _replicated(found: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  sharding = parallel.replicated(mesh)
  return {
    name: jax.make_array_from_callback(table.shape, sharding, lambda index, table=table: table[index])
    for name, table in found.items()
  }


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
