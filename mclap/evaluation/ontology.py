"""Label ontologies for the triplet test of text embeddings (Vasilakis et al.).

An ontology is a JSON tree whose leaves are labels: an object maps node names to subtrees, a list
holds leaf names or further objects, and a leaf may also be a key with an empty value, e.g.
`{"keyboards": ["piano", "organ"], "winds": {"brass": ["trumpet"], "woodwinds": ["flute"]}}`.
Two labels are as far apart as the number of tree edges between them. A triplet (anchor,
positive, negative) is counted only when the positive is strictly closer to the anchor in the tree
than the negative; the embedding gets it right when the anchor is more similar to the positive.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from mclap.errors import UserError
from mclap.evaluation import metrics


def leaf_paths(tree: Any, file: str = "the ontology") -> dict[str, tuple[str, ...]]:
  """Each leaf label's path of node names from the root (the label last)."""
  paths: dict[str, tuple[str, ...]] = {}

  def visit(node: Any, prefix: tuple[str, ...]) -> None:
    if isinstance(node, str):
      if node in paths:
        raise UserError(f"{file}: label {node!r} appears twice; each leaf label must be unique")
      paths[node] = (*prefix, node)
    elif isinstance(node, list):
      for child in node:
        visit(child, prefix)
    elif isinstance(node, dict):
      for name, child in node.items():
        if child in (None, [], {}):
          visit(name, prefix)
        else:
          visit(child, (*prefix, name))
    else:
      raise UserError(f"{file}: {node!r} under {'/'.join(prefix) or 'the root'} is not a name, list or object")

  visit(tree, ())
  if len(paths) < 3:
    raise UserError(f"{file}: {len(paths)} leaf labels; triplets need at least 3")
  return paths


def load(path: str) -> dict[str, tuple[str, ...]]:
  try:
    tree = json.loads(pathlib.Path(path).read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"ontology {path}: cannot read it as JSON ({e})") from None
  return leaf_paths(tree, path)


def tree_distances(paths: list[tuple[str, ...]]) -> np.ndarray:
  """Edges between every two leaves `[L, L]`: up from each to their deepest common ancestor."""
  n = len(paths)
  distances = np.zeros((n, n), np.int64)
  for i, a in enumerate(paths):
    for j, b in enumerate(paths):
      common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
      distances[i, j] = len(a) + len(b) - 2 * common
  return distances


def triplet_accuracy(embeddings: np.ndarray, distances: np.ndarray) -> dict[str, float]:
  """Percent of the ontology's triplets in which the anchor's cosine similarity to the positive
  beats that to the negative (a tie counts one half), and how many triplets there are."""
  similarity = metrics.normalize(embeddings) @ metrics.normalize(embeddings).T
  correct = total = 0.0
  for anchor in range(len(distances)):
    others = np.arange(len(distances)) != anchor
    d, s = distances[anchor][others], similarity[anchor][others]
    valid = d[:, None] < d[None, :]  # [positive, negative]
    wins = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    correct += float(np.sum(wins * valid))
    total += float(valid.sum())
  if total == 0:
    raise UserError("the ontology has no triplets: every two labels are equally far apart; it needs some depth")
  return {"accuracy": 100.0 * correct / total, "num_triplets": int(total)}
