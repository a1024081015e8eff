"""Retrieval metrics (pure numpy) in MusCALL's units: R@K and mAP@10 in percent, ranks from 1.

Ties are broken deterministically in favour of the lower candidate index: a candidate ranks
ahead of the true item if its score is higher, or equal with a smaller index (a stable sort by
descending score).
"""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """1-based rank of `targets[q]` among the candidates of each query row of `scores` `[Q, N]`."""
  scores = np.asarray(scores)
  true = scores[np.arange(len(scores)), targets][:, None]
  ahead = (scores > true) | ((scores == true) & (np.arange(scores.shape[1])[None, :] < targets[:, None]))
  return 1 + ahead.sum(axis=1)


def retrieval_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
  """R@K and mAP@10 (percent), median and mean rank, for queries with one relevant item each.

  With one relevant item, average precision at 10 is 1/rank if the item is in the top 10, else 0.
  """
  ranks = np.asarray(ranks, np.float64)
  out = {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in ks}
  out["mAP@10"] = 100.0 * float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))
  out["median_rank"] = float(np.median(ranks))
  out["mean_rank"] = float(np.mean(ranks))
  return out


def chance_metrics(num_candidates: int, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
  """Expected R@K (percent) and median rank of a random ranking of `num_candidates` items."""
  out = {f"R@{k}": 100.0 * min(k, num_candidates) / num_candidates for k in ks}
  out["mAP@10"] = 100.0 * sum(1.0 / r for r in range(1, min(10, num_candidates) + 1)) / num_candidates
  out["median_rank"] = (num_candidates + 1) / 2
  return out


def text_audio_retrieval(audio_emb: np.ndarray, text_emb: np.ndarray) -> dict[str, dict[str, float]]:
  """Both directions for paired rows (caption i describes clip i), ranking by cosine similarity."""
  scores = np.asarray(text_emb, np.float32) @ np.asarray(audio_emb, np.float32).T  # [texts, audios]
  targets = np.arange(len(scores))
  return {
    "text_to_audio": retrieval_metrics(target_ranks(scores, targets)),
    "audio_to_text": retrieval_metrics(target_ranks(scores.T, targets)),
  }
