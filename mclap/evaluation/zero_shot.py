"""Zero-shot single-label classification: each class is the text embedding of its prompt, each
clip goes to the class of highest cosine similarity (GTZAN, TinySOL, the synthetic instruments).

Settings: `split`, `dir` (another prepared corpus, e.g. GTZAN; "" = the training corpus),
`prompts` (prompt sets, see `prompts`), `ensemble`, `label_texts` ("gtzan" or a JSON file, for the
definition prompts), `templates_file`. Reported per prompt set (and their ensemble) beside chance.
"""

from __future__ import annotations

import numpy as np

from mclap.evaluation import metrics
from mclap.evaluation import prompts as prompts_lib

KEYS = ("top1", "top2", "top3", "macro_f1", "roc_auc", "pr_auc")


def class_embeddings(context, settings, labels: list[str]) -> dict[str, np.ndarray]:
  """Per prompt set (and `ensemble`), normalised label embeddings `[labels, dim]`."""
  label_texts = prompts_lib.load_label_texts(settings.get("label_texts", ""))
  out = {}
  for name in prompts_lib.prompt_sets(settings["prompts"], settings.get("templates_file", "")):
    out[name] = metrics.normalize(context.embed_texts(prompts_lib.prompts(name, labels, label_texts)))
  if settings.get("ensemble", True) and len(out) > 1:
    out["ensemble"] = prompts_lib.ensemble(list(out.values()))
  return out


def run(context, settings) -> dict:
  corpus = settings.get("dir", "")
  names, emb = context.labelled(corpus, settings["split"], "zero-shot classification needs labels")
  audio, labels = emb["audio"], emb["label"]
  results = {
    name: metrics.classification_metrics(audio @ classes.T, labels)
    for name, classes in class_embeddings(context, settings, names).items()
  }
  return {
    "split": settings["split"],
    "corpus": corpus or context.config.data.dir,
    "num_items": len(labels),
    "unlabelled_items": len(context.embeddings(settings["split"], corpus, with_text=False)["label"]) - len(labels),
    "classes": names,
    "prompts": results,
    "chance": metrics.classification_chance(labels, len(names)),
  }


def table(results: dict) -> str:
  lines = [
    f"zero-shot classification on '{results['split']}' of {results['corpus']} "
    f"({results['num_items']} clips, {len(results['classes'])} classes)",
    f"{'prompts':34}" + "".join(f"{k:>10}" for k in KEYS),
  ]
  rows = [*results["prompts"].items(), ("chance", results["chance"])]
  lines += [f"{name[:34]:34}" + "".join(f"{values[k]:>10.1f}" for k in KEYS) for name, values in rows]
  return "\n".join(lines)
