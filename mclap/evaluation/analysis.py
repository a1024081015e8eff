"""Embedding-space analysis (Vasilakis et al.): how the spaces separate classes, and whether the
text tower's label embeddings respect a label ontology.

Class embeddings that score every clip:
- `joint/text`: the labels' prompt embeddings (`prompt`, one prompt set) — zero-shot's classes;
- `<space>/audio_centroids` for `joint` and `pre_joint`: "audio-only" label embeddings, each
  class's mean audio embedding, leave-one-out (a clip never scores against a centroid containing
  it). Pre-joint audio and text widths differ, so text is compared in the joint space only.

For each: top-1 accuracy, macro F1 and ROC-AUC (as `zero_shot`), the mean similarity of clips to
their own class (positive) and to the others (negative), and the median top-1 minus top-2
similarity; histograms of positive vs negative similarities (`analysis_similarities.png`) and of
the top-1 minus top-2 margin, for right and for wrong top-1 classes (`analysis_margins.png`).

With `ontology` (a JSON tree file, see `ontology`): the triplet accuracy of the tree's labels'
prompt embeddings in both spaces, beside chance (50%).

Clips that are the only clip of their class are left out (their own centroid is undefined) and
counted.
"""

from __future__ import annotations

import numpy as np

from mclap.evaluation import metrics, ontology, plots
from mclap.evaluation import prompts as prompts_lib
from mclap.evaluation.context import SPACES, NotApplicable


def class_scores(context, settings, audio: dict[str, np.ndarray], labels, names: list[str]) -> dict[str, np.ndarray]:
  """Cosine similarities `[clips, classes]` per kind of class embedding; a class without clips has
  no centroid and scores -inf (it never wins)."""
  texts = prompts_lib.prompts(settings["prompt"], names, prompts_lib.load_label_texts(settings.get("label_texts", "")))
  out = {"joint/text": metrics.normalize(audio["audio"]) @ metrics.normalize(context.embed_texts(texts)).T}
  for space, (key, _) in SPACES.items():
    scores = metrics.leave_one_out_centroid_scores(audio[key], labels, len(names))
    out[f"{space}/audio_centroids"] = np.where(np.isnan(scores), -np.inf, scores)
  return out


def summary(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  positive, negative = metrics.positive_negative_similarities(scores, labels)
  negative = negative[np.isfinite(negative)]
  return {
    **metrics.classification_metrics(scores, labels),
    "positive_mean": float(positive.mean()),
    "negative_mean": float(negative.mean()),
    "margin_median": float(np.median(metrics.top_margin(scores))),
  }


def run(context, settings) -> dict:
  corpus = settings.get("dir", "")
  names, emb = context.labelled(corpus, settings["split"], "the analysis needs labels")
  counts = np.bincount(emb["label"], minlength=len(names))
  keep = counts[emb["label"]] > 1
  if len(np.unique(emb["label"][keep])) < 2:
    raise NotApplicable(f"split '{settings['split']}' needs two or more clips in each of two or more classes")
  audio = {k: v[keep] for k, v in emb.items()}
  labels = audio["label"]
  scores = class_scores(context, settings, audio, labels, names)
  out = {
    "split": settings["split"],
    "corpus": corpus or context.config.data.dir,
    "num_items": int(keep.sum()),
    "left_out_clips": int((~keep).sum()),
    "classes": names,
    "prompt": settings["prompt"],
    "class_embeddings": {name: summary(s, labels) for name, s in scores.items()},
    "chance": metrics.classification_chance(labels, len(names)),
  }
  if settings.get("ontology"):
    paths = ontology.load(settings["ontology"])
    distances = ontology.tree_distances(list(paths.values()))
    texts = prompts_lib.prompts(settings["prompt"], list(paths), {})
    out["ontology"] = {
      "file": settings["ontology"],
      "labels": len(paths),
      **{space: ontology.triplet_accuracy(context.embed_texts(texts, space), distances) for space in SPACES},
    }
  if context.plot_path("analysis_similarities.png"):
    out["plots"] = plot(context, scores, labels, int(settings.get("bins", 40)))
  return out


def _title(name: str) -> str:
  space, source = name.split("/")
  return f"{space.replace('_', '-')} space: " + (
    "label prompts" if source == "text" else "audio centroids (leave-one-out)"
  )


def plot(context, scores: dict[str, np.ndarray], labels: np.ndarray, bins: int) -> list[str]:
  similarities, axes = plots.new_figure(len(scores))
  for ax, (name, s) in zip(axes, scores.items()):
    positive, negative = metrics.positive_negative_similarities(s, labels)
    series = {"own class (positive)": positive, "other classes (negative)": negative[np.isfinite(negative)]}
    plots.overlaid_histograms(ax, series, "cosine similarity of clip and class", _title(name), bins)
  margins, axes = plots.new_figure(len(scores))
  for ax, (name, s) in zip(axes, scores.items()):
    margin, right = metrics.top_margin(s), s.argmax(axis=1) == labels
    series = {"top-1 class right": margin[right], "top-1 class wrong": margin[~right]}
    plots.overlaid_histograms(ax, series, "top-1 minus top-2 similarity", _title(name), bins)
  similarities.suptitle("Clip–class similarities: own class vs the others")
  margins.suptitle("How decisively the best class wins")
  return [
    plots.save(similarities, context.plot_path("analysis_similarities.png")),
    plots.save(margins, context.plot_path("analysis_margins.png")),
  ]


def table(results: dict) -> str:
  percents, similarities = ("top1", "macro_f1", "roc_auc"), ("positive_mean", "negative_mean", "margin_median")
  heads = ("top1", "macro F1", "ROC-AUC", "pos. sim", "neg. sim", "margin")
  left_out = f"; {results['left_out_clips']} clips alone in their class left out" if results["left_out_clips"] else ""
  lines = [
    f"embedding-space analysis on '{results['split']}' of {results['corpus']} ({results['num_items']} clips, "
    f"{len(results['classes'])} classes, prompts '{results['prompt']}'{left_out})",
    f"{'class embeddings':28}" + "".join(f"{h:>10}" for h in heads),
  ]
  for name, r in [*results["class_embeddings"].items(), ("chance", results["chance"])]:
    cells = [f"{r[k]:>10.1f}" for k in percents] + [f"{r[k]:>10.3f}" for k in similarities if k in r]
    lines.append(f"{name:28}" + "".join(cells))
  if onto := results.get("ontology"):
    accuracy = ", ".join(f"{space} {onto[space]['accuracy']:.1f}" for space in SPACES)
    lines.append(
      f"ontology triplet accuracy ({onto['file']}, {onto['labels']} labels, {onto['joint']['num_triplets']} "
      f"triplets): {accuracy} [chance 50.0]"
    )
  return "\n".join(lines)
