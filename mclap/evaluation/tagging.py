"""Zero-shot tagging: each tag is the text embedding of its prompt; a clip's score for a tag is
their cosine similarity (MTAT top-50, MTG-Jamendo subsets, the synthetic tags).

ROC-AUC and PR-AUC (macro) both as *retrieval* (per tag, ranking the clips) and *annotation* (per
clip, ranking the tags), per prompt set and their ensemble; tags or clips whose curve is undefined
(no positive, or only positives) are counted and left out of the means. The best and worst tags by
retrieval ROC-AUC are listed. Settings as in `zero_shot`, plus `tags` (a subset; empty = all the
corpus's tags) and `num_best_worst`.
"""

from __future__ import annotations

import numpy as np

from mclap.errors import UserError
from mclap.evaluation import metrics, zero_shot
from mclap.evaluation.context import NotApplicable


def run(context, settings) -> dict:
  corpus = settings.get("dir", "")
  info = context.info(corpus)
  vocab = list(info.get("tags", []))
  chosen = list(settings.get("tags", ())) or vocab
  if unknown := [t for t in chosen if t not in vocab]:
    raise UserError(f"evals tags {unknown[:5]} are not tags of {corpus or context.config.data.dir}")
  if not chosen:  # Captions only, as your own music's often are.
    raise NotApplicable(f"{corpus or context.config.data.dir} has no tags; zero-shot tagging needs them")
  columns = [vocab.index(t) for t in chosen]
  emb = context.embeddings(settings["split"], corpus, with_text=False)
  labels = emb["tags"][:, columns].astype(np.int64)
  if not any(0 < n < len(labels) for n in labels.sum(axis=0)):  # Every curve undefined: nothing to average.
    raise NotApplicable(
      f"no tag of {corpus or context.config.data.dir} is on some clips of '{settings['split']}' and not on others; "
      "zero-shot tagging ranks clips by a tag"
    )
  tag_text = info.get("tag_text", {})
  classes = zero_shot.class_embeddings(context, settings, [tag_text.get(t, t) for t in chosen])
  results = {}
  for name, tag_emb in classes.items():
    scores = emb["audio"] @ tag_emb.T
    results[name] = {"retrieval": metrics.tagging_metrics(labels, scores, 0)}
    results[name]["annotation"] = metrics.tagging_metrics(labels, scores, 1)
  main = "ensemble" if "ensemble" in results else next(iter(results))
  per_tag = results[main]["retrieval"]["per_curve_roc_auc"]
  ranked = sorted((v, t) for v, t in zip(per_tag, chosen) if v is not None)
  count = int(settings.get("num_best_worst", 5))
  positive_rate = labels.mean(axis=0)
  return {
    "split": settings["split"],
    "corpus": corpus or context.config.data.dir,
    "num_items": len(labels),
    "tags": chosen,
    "prompts": results,
    "best_tags": [{"tag": t, "roc_auc": v} for v, t in reversed(ranked[-count:])],
    "worst_tags": [{"tag": t, "roc_auc": v} for v, t in ranked[:count]],
    "ranked_by": f"retrieval ROC-AUC, prompts '{main}'",
    "chance": {
      "retrieval": {"roc_auc": 50.0, "pr_auc": 100.0 * float(positive_rate[positive_rate > 0].mean())},
      "annotation": {"roc_auc": 50.0, "pr_auc": 100.0 * float(labels.mean(axis=1)[labels.sum(1) > 0].mean())},
    },
  }


def table(results: dict) -> str:
  lines = [
    f"zero-shot tagging on '{results['split']}' of {results['corpus']} "
    f"({results['num_items']} clips, {len(results['tags'])} tags)",
    f"{'prompts':34}{'retr. ROC':>11}{'retr. PR':>10}{'ann. ROC':>10}{'ann. PR':>10}",
  ]
  rows = [*results["prompts"].items(), ("chance", results["chance"])]
  for name, r in rows:
    cells = [r[way][k] for way in ("retrieval", "annotation") for k in ("roc_auc", "pr_auc")]
    lines.append(f"{name[:34]:34}{cells[0]:>11.1f}{cells[1]:>10.1f}{cells[2]:>10.1f}{cells[3]:>10.1f}")
  best = ", ".join(f"{x['tag']} {x['roc_auc']:.1f}" for x in results["best_tags"])
  worst = ", ".join(f"{x['tag']} {x['roc_auc']:.1f}" for x in results["worst_tags"])
  lines += [f"best tags ({results['ranked_by']}): {best}", f"worst tags: {worst}"]
  return "\n".join(lines)
