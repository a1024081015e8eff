"""What every evaluator is given: the config, an embedder with the model's state, embeddings and
plot paths.

Embedding spaces (`SPACES`): `joint` is the shared audio–text space (normalised projections);
`pre_joint` is each tower's own output before its projection head (audio and text widths may
differ there, so only same-modality comparisons are made in it).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from mclap.data import pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import UserError
from mclap.models.embedder import SPACES, Embedder

__all__ = ["SPACES", "EvalContext", "NotApplicable"]


class NotApplicable(UserError):
  """An evaluator cannot run on this data (a corpus without labels, too few labelled clips for a
  map): it is skipped with a warning and the other evaluators run."""


@dataclasses.dataclass
class EvalContext:
  """What evaluators share: the config, the model (an embedder and its state), split embeddings
  (computed once per corpus and split) and text embedding."""

  config: ml_collections.ConfigDict
  embedder: Embedder
  state: Any
  out_dir: pathlib.Path | None = None  # Where plots are written (None: no plots).
  show_progress: bool = False  # A bar while a split is embedded (`mclap.eval`; not during training).
  _cache: dict = dataclasses.field(default_factory=dict)

  def corpus_config(self, corpus_dir: str = "") -> ml_collections.ConfigDict:
    """The config reading `corpus_dir` ("" = the training corpus, `data.dir`)."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.data.dir = corpus_dir or self.config.data.dir
    return config

  def info(self, corpus_dir: str = "") -> dict[str, Any]:
    return records.read_info(corpus_dir or self.config.data.dir)

  def embeddings(self, split: str, corpus_dir: str = "", with_text: bool = True) -> dict[str, np.ndarray]:
    """Audio embeddings (`audio`, and the pre-projection `audio_features`; central crop or
    `data.eval_crops` averaged), labels and multi-hot tags of every record of `split`, in order,
    with the first caption's text embedding when `with_text`."""
    key = (corpus_dir or self.config.data.dir, split, with_text)
    if key not in self._cache:
      ds = pipeline.eval_dataset(
        self.corpus_config(corpus_dir),
        split,
        with_text=with_text,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      batches = tqdm.tqdm(
        pipeline.iterate(ds, num_workers=0, prefetch=self.config.data.prefetch),
        total=len(ds),
        desc=f"embed {key[0]} {split}",
        unit="batch",
        disable=not self.show_progress or jax.process_index() != 0,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # Keep logs of batch jobs short.
      )
      self._cache[key] = self.embedder.dataset(self.state, batches)
    return self._cache[key]

  def labelled(self, corpus_dir: str, split: str, needs: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """The corpus's label names, and the audio embeddings (`embeddings` without text) of the
    records of `split` that have a label. A corpus without labels (captions and tags only, as your
    own folder's or a features corpus) is `NotApplicable`, with a message ending in `needs`."""
    names = list(self.info(corpus_dir).get("label_names", []))
    if not names:
      raise NotApplicable(f"{corpus_dir or self.config.data.dir} has no label_names; {needs}")
    emb = self.embeddings(split, corpus_dir, with_text=False)
    keep = emb["label"] >= 0
    return names, {k: v[keep] for k, v in emb.items()}

  def embed_texts(self, texts: list[str], space: str = "joint") -> np.ndarray:
    """Embeddings `[len(texts), dim]` of arbitrary texts (prompts): L2-normalised in the joint
    space, the text tower's raw features in the pre-joint space."""
    return self.embedder.texts(self.state, tokenizer_lib.for_config(self.config), texts, space)

  def plot_path(self, name: str) -> pathlib.Path | None:
    """Where to write plot `name` (None when plots are off or another process writes them)."""
    if self.out_dir is None or jax.process_index() != 0:
      return None
    self.out_dir.mkdir(parents=True, exist_ok=True)
    return self.out_dir / name
