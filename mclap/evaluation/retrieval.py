"""Text↔audio retrieval: R@1/5/10, mAP@10, median and mean rank, both directions, beside chance.

Reported on the full split and on MusCALL's protocol (a seeded random subset of `subset_size`
pairs, or every pair if the split is smaller). Ties go to the lower index (`mclap.evaluation.metrics`).
"""

from __future__ import annotations

import numpy as np

from mclap.evaluation import metrics

DIRECTIONS = ("text_to_audio", "audio_to_text")


def _scores(audio: np.ndarray, text: np.ndarray) -> dict:
  return {
    **metrics.text_audio_retrieval(audio, text),
    "num_items": len(audio),
    "chance": metrics.chance_metrics(len(audio)),
  }


def run(context, settings) -> dict:
  emb = context.embeddings(settings["split"])
  n = len(emb["audio"])
  size = min(int(settings["subset_size"]), n)
  subset = np.sort(np.random.default_rng(settings["subset_seed"]).choice(n, size=size, replace=False))
  return {
    "split": settings["split"],
    **_scores(emb["audio"], emb["text"]),
    "muscall_protocol": {"seed": settings["subset_seed"], **_scores(emb["audio"][subset], emb["text"][subset])},
    "tie_breaking": "a candidate with a score equal to the true item's ranks ahead of it if its index is lower",
  }


def table(results: dict) -> str:
  """The full-split numbers as a text table with chance in brackets."""
  keys = ("R@1", "R@5", "R@10", "mAP@10", "median_rank")
  chance = results["chance"]
  lines = [
    f"retrieval on '{results['split']}' ({results['num_items']} pairs); [chance]",
    f"{'':14}" + "".join(f"{k:>18}" for k in keys),
  ]
  for direction in DIRECTIONS:
    cells = "".join(f"{results[direction][k]:>9.1f} [{chance[k]:>5.1f}]" + "  " for k in keys)
    lines.append(f"{direction:14}{cells}")
  return "\n".join(lines)
