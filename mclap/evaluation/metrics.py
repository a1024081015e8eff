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


# ---------------------------------------------------------------- Classification and tagging.


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Percent of rows whose true class is among the k best-scored (ties: lower class index first)."""
  return 100.0 * float(np.mean(target_ranks(scores, np.asarray(labels)) <= k))


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Unweighted mean of the per-class F1 over the classes that occur in `labels` or `predictions`
  (a class never predicted, or predicted but absent, has F1 0), in percent."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  f1 = []
  for c in np.union1d(labels, predictions):
    tp = np.sum((predictions == c) & (labels == c))
    denominator = np.sum(predictions == c) + np.sum(labels == c)
    f1.append(2.0 * tp / denominator)
  return 100.0 * float(np.mean(f1))


def _descending_thresholds(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """True and false positives counted at each distinct score, from the highest down (tied scores
  form one threshold)."""
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  last_of_group = np.r_[np.diff(scores) != 0, True]
  tp = np.cumsum(labels)[last_of_group]
  fp = np.cumsum(1 - labels)[last_of_group]
  return tp, fp


def _curve_areas(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
  """(ROC-AUC, average precision) of binary `labels` ranked by `scores`, from one pass over the
  thresholds; NaN where the area is undefined."""
  labels = np.asarray(labels, np.float64)
  positives, negatives = labels.sum(), len(labels) - labels.sum()
  if positives == 0:
    return float("nan"), float("nan")
  tp, fp = _descending_thresholds(labels, np.asarray(scores, np.float64))
  recall = np.r_[0.0, tp / positives]  # The true-positive rate.
  average_precision = float(np.sum(np.diff(recall) * tp / (tp + fp)))
  if negatives == 0:
    return float("nan"), average_precision
  fpr = np.r_[0.0, fp / negatives]
  return float(np.sum(np.diff(fpr) * (recall[1:] + recall[:-1]) / 2)), average_precision  # Ties: diagonal steps.


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve of binary `labels` ranked by `scores`: the probability that a
  random positive scores above a random negative, ties counting one half. NaN when the labels
  have only one class (the area is undefined)."""
  return _curve_areas(labels, scores)[0]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the precision-recall curve as the step sum over thresholds,
  sum_n (R_n - R_{n-1}) P_n (scikit-learn's definition; tied scores form one threshold). NaN
  without positives."""
  return _curve_areas(labels, scores)[1]


def tagging_metrics(labels: np.ndarray, scores: np.ndarray, axis: int) -> dict:
  """ROC-AUC and PR-AUC (percent) of multi-label `labels` `[items, tags]` under `scores`, one curve
  per column (axis 0: *retrieval*, each tag ranking the items) or per row (axis 1: *annotation*,
  each item ranking the tags). Macro averages over the curves that are defined; the undefined
  ones (no positive, or nothing but positives) are listed by index, not averaged."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  if axis == 1:
    labels, scores = labels.T, scores.T
  roc, pr = np.array([_curve_areas(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]).reshape(-1, 2).T
  defined = ~np.isnan(roc)
  return {
    "roc_auc": 100.0 * float(np.mean(roc[defined])) if defined.any() else float("nan"),
    "pr_auc": 100.0 * float(np.mean(pr[defined])) if defined.any() else float("nan"),
    "per_curve_roc_auc": [None if np.isnan(v) else 100.0 * float(v) for v in roc],
    "per_curve_pr_auc": [None if np.isnan(v) else 100.0 * float(v) for v in pr],
    "undefined": [int(j) for j in np.flatnonzero(~defined)],
  }


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Single-label zero-shot classification by the best score `[items, classes]`: top-1/2/3
  accuracy, macro F1, and one-vs-rest ROC-AUC / PR-AUC macro-averaged over the classes present."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  one_hot = np.eye(scores.shape[1], dtype=np.int64)[labels]
  curves = tagging_metrics(one_hot, scores, axis=0)
  return {
    **{f"top{k}": top_k_accuracy(scores, labels, k) for k in (1, 2, 3)},
    "macro_f1": macro_f1(labels, np.argmax(scores, axis=1)),
    "roc_auc": curves["roc_auc"],
    "pr_auc": curves["pr_auc"],
  }


def classification_chance(labels: np.ndarray, num_classes: int) -> dict[str, float]:
  """Expected values of the same metrics under scores that ignore the audio (uniformly random
  rankings): top-k k/C; macro F1 of uniform random predictions; ROC-AUC 50; PR-AUC the mean
  class frequency."""
  labels = np.asarray(labels)
  present = np.unique(labels)
  frequency = np.bincount(labels, minlength=num_classes)[present] / len(labels)
  # Per present class, F1 of predicting it with probability 1/C: 2 p (1/C) / (p + 1/C); classes
  # absent from the labels are predicted now and then too and score 0.
  f1 = 2 * frequency / num_classes / (frequency + 1 / num_classes)
  return {
    **{f"top{k}": 100.0 * min(k, num_classes) / num_classes for k in (1, 2, 3)},
    "macro_f1": 100.0 * float(f1.sum() / num_classes),
    "roc_auc": 50.0,
    "pr_auc": 100.0 * float(frequency.mean()),
  }


# ---------------------------------------------------------------- Embedding-space analysis.


def normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (cosine similarity is then a dot product)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def leave_one_out_centroid_scores(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Cosine similarity `[items, classes]` of each item to each class's "audio-only" label
  embedding, the mean of that class's normalised embeddings, where an item's own class mean leaves
  the item out (it never scores against a centroid that contains it). Undefined scores are NaN: a
  class with no items, and an item's own class when the item is its only member."""
  x, labels = normalize(embeddings), np.asarray(labels)
  sums = np.zeros((num_classes, x.shape[1]))
  np.add.at(sums, labels, x)
  counts = np.bincount(labels, minlength=num_classes)
  scores = x @ normalize(sums).T  # The mean's direction is the sum's.
  scores[:, counts == 0] = np.nan
  own = np.sum(x * normalize(sums[labels] - x), axis=1)
  scores[np.arange(len(x)), labels] = np.where(counts[labels] > 1, own, np.nan)
  return scores


def positive_negative_similarities(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The similarities of items to their own class (`[items]`) and to every other class (flat)."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  own = np.zeros(scores.shape, bool)
  own[np.arange(len(scores)), labels] = True
  return scores[own], scores[~own]


def top_margin(scores: np.ndarray) -> np.ndarray:
  """Best minus second-best score of each row: how decisively the top class wins."""
  best_two = -np.sort(-np.asarray(scores), axis=1)[:, :2]
  return best_two[:, 0] - best_two[:, 1]


# ---------------------------------------------------------------- Joint-space geometry.


def modality_gap(audio: np.ndarray, text: np.ndarray) -> float:
  """Distance between the centroids of the L2-normalised audio and text embeddings (the modality
  gap of Liang et al., NeurIPS 2022): 0 when the two clouds are centred alike."""
  return float(np.linalg.norm(normalize(audio).mean(axis=0) - normalize(text).mean(axis=0)))


def alignment(audio: np.ndarray, text: np.ndarray, alpha: float = 2.0) -> float:
  """Mean `||a_i - t_i||^alpha` over the pairs of normalised embeddings (Wang & Isola, ICML 2020):
  0 when every clip coincides with its caption, 4 (alpha 2) when each is opposite its caption."""
  return float(np.mean(np.linalg.norm(normalize(audio) - normalize(text), axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
  """log of the mean Gaussian potential `exp(-t ||x_i - x_j||²)` over distinct pairs of normalised
  embeddings (Wang & Isola, ICML 2020): lower is spread more evenly over the sphere; 0 when all
  coincide."""
  x = normalize(x)
  squared = np.maximum(2.0 - 2.0 * x @ x.T, 0.0)[np.triu_indices(len(x), k=1)]
  return float(np.logaddexp.reduce(-t * squared) - np.log(squared.size))


def effective_rank(x: np.ndarray) -> float:
  """exp of the entropy of the singular values taken as a distribution (Roy & Vetterli, 2007):
  how many directions the embeddings use, k for k orthogonal directions of equal weight."""
  singular = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
  p = singular[singular > 0] / singular.sum()
  return float(np.exp(-(p * np.log(p)).sum()))


def own_nearest_fraction(audio: np.ndarray, text: np.ndarray) -> float:
  """The fraction of captions whose most similar clip (cosine; ties to the lower index) is their own."""
  scores = normalize(text) @ normalize(audio).T
  return float(np.mean(target_ranks(scores, np.arange(len(scores))) == 1))
