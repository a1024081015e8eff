"""t-SNE maps of the audio embeddings, coloured by label (`tsne.png`).

Left: the joint space, with each label's prompt embedding (`prompt`) mapped together with the
clips and drawn as a labelled star, so one sees whether a label's text lands among its clips.
Right: the audio tower's pre-joint features alone. At most `max_points` clips (a seeded draw) are
mapped; t-SNE uses cosine distances with `perplexity` (capped for small splits).
"""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE

from mclap.evaluation import metrics, plots
from mclap.evaluation import prompts as prompts_lib
from mclap.evaluation.context import NotApplicable


def embed_2d(points: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
  perplexity = min(perplexity, (len(points) - 1) / 3)  # t-SNE needs perplexity < points.
  return TSNE(perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(points)


def run(context, settings) -> dict:
  corpus = settings.get("dir", "")
  names, emb = context.labelled(corpus, settings["split"], "the t-SNE map is coloured by label")
  labelled = np.arange(len(emb["label"]))
  seed = int(settings.get("seed", 0))
  count = min(int(settings.get("max_points", 2000)), len(labelled))
  chosen = np.sort(np.random.default_rng(seed).choice(labelled, count, replace=False))
  if count < 8:
    raise NotApplicable(
      f"a t-SNE map needs at least 8 points; split '{settings['split']}' has {len(labelled)} labelled clips "
      f"(max_points {settings.get('max_points', 2000)})"
    )
  label_texts = prompts_lib.load_label_texts(settings.get("label_texts", ""))
  text = context.embed_texts(prompts_lib.prompts(settings["prompt"], names, label_texts))
  perplexity = float(settings.get("perplexity", 30.0))
  joint = embed_2d(np.concatenate([metrics.normalize(emb["audio"][chosen]), text]), perplexity, seed)
  pre_joint = embed_2d(emb["audio_features"][chosen], perplexity, seed)
  out = {"split": settings["split"], "corpus": corpus or context.config.data.dir, "num_points": count}
  if path := context.plot_path("tsne.png"):
    out["plots"] = [plot(path, joint, pre_joint, emb["label"][chosen], names, settings["prompt"])]
  return out


def plot(path, joint: np.ndarray, pre_joint: np.ndarray, labels: np.ndarray, names: list[str], prompt: str) -> str:
  figure, (left, right) = plots.new_figure(2, width=6.5, height=6.0)
  colours = plots.colours(len(names))
  clips, label_points = joint[: len(labels)], joint[len(labels) :]
  for c, name in enumerate(names):
    here = labels == c
    left.scatter(*clips[here].T, s=10, alpha=0.6, color=colours[c], label=name)
    right.scatter(*pre_joint[here].T, s=10, alpha=0.6, color=colours[c], label=name)
    left.scatter(*label_points[c], s=260, marker="*", color=colours[c], edgecolors="black", linewidths=0.8)
    left.annotate(name, label_points[c], xytext=(6, 6), textcoords="offset points", fontsize=9, weight="bold")
  left.set_title(f"Joint space: clips (dots) and label prompts '{prompt}' (stars)")
  right.set_title("Pre-joint audio features: clips")
  for ax in (left, right):
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
  right.legend(title="label", markerscale=2, fontsize=8, loc="best")
  return plots.save(figure, path)


def table(results: dict) -> str:
  return f"t-SNE map of {results['num_points']} clips of '{results['split']}': {', '.join(results.get('plots', []))}"
