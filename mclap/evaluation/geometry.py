"""Joint-space geometry of a split: how the two towers' embeddings sit on the sphere.

The modality gap (distance between the audio and text centroids, Liang et al., NeurIPS 2022),
alignment (mean squared distance of a clip to its caption) and uniformity (log mean Gaussian
potential over pairs, lower = more evenly spread; Wang & Isola, ICML 2020), the effective rank
of each tower's embeddings in the joint and pre-joint spaces (Roy & Vetterli, 2007), and the
percentage of captions whose nearest clip is their own. Uniformity is over pairs, so it takes a
seeded subset of at most `max_points` items.
"""

from __future__ import annotations

import numpy as np

from mclap.evaluation import metrics


def run(context, settings) -> dict:
  emb = context.embeddings(settings["split"])
  audio, text = emb["audio"], emb["text"]
  n = len(audio)
  subset = np.sort(np.random.default_rng(settings["seed"]).permutation(n)[: min(n, int(settings["max_points"]))])
  return {
    "split": settings["split"],
    "num_items": n,
    "modality_gap": metrics.modality_gap(audio, text),
    "alignment": metrics.alignment(audio, text),
    "uniformity": {"audio": metrics.uniformity(audio[subset]), "text": metrics.uniformity(text[subset])},
    "effective_rank": {
      "audio": metrics.effective_rank(audio),
      "text": metrics.effective_rank(text),
      "audio_features": metrics.effective_rank(emb["audio_features"]),
      "text_features": metrics.effective_rank(emb["text_features"]),
    },
    "own_nearest": 100.0 * metrics.own_nearest_fraction(audio, text),
  }


def table(results: dict) -> str:
  rank, uniform = results["effective_rank"], results["uniformity"]
  return "\n".join(
    [
      f"joint-space geometry on '{results['split']}' ({results['num_items']} pairs)",
      f"modality gap {results['modality_gap']:.3f}   alignment {results['alignment']:.3f}   "
      f"own caption nearest {results['own_nearest']:.1f}%",
      f"uniformity: audio {uniform['audio']:.3f}, text {uniform['text']:.3f}",
      f"effective rank: audio {rank['audio']:.1f} (features {rank['audio_features']:.1f}), "
      f"text {rank['text']:.1f} (features {rank['text_features']:.1f})",
    ]
  )
