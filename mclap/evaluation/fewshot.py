"""Few-shot probes (Sideras): how well frozen audio embeddings classify with little labelled data.

For each number of labelled clips in `sizes` (Sideras: 48, 160, 400, 800, 1600, 3200), `seeds`
stratified draws from `train_split` train two probes on the frozen embeddings of each space —
`pre_joint` (the audio tower's features) and `joint` (the normalised projection): logistic
regression, and a small MLP head (one hidden ReLU layer of `mlp_hidden` units, cross-entropy, as
Sideras's 512 → C head). Each is scored by macro F1 on every labelled clip of `split`; reported as
mean ± std over the draws, beside chance, as a table and a plot (`fewshot.png`). Features are
standardised with the training draw's statistics. Sizes larger than the training split are
skipped and listed.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mclap.errors import UserError
from mclap.evaluation import metrics, plots
from mclap.evaluation.context import SPACES

PROBES = ("logistic", "mlp")


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """`size` distinct indices (sorted) with each class's share of them proportional to its share
  of `labels`: floor of the quota, plus one for the classes with the largest remainders."""
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  if not 0 < size <= len(labels):
    raise ValueError(f"cannot draw {size} of {len(labels)} items")
  quota = size * counts / len(labels)
  take = np.floor(quota).astype(int)
  take[np.argsort(take - quota, kind="stable")[: size - take.sum()]] += 1
  picks = [rng.choice(np.flatnonzero(inverse == c), n, replace=False) for c, n in enumerate(take)]
  return np.sort(np.concatenate(picks))


def make_probe(kind: str, seed: int, settings):
  if kind == "logistic":
    classifier = LogisticRegression(C=float(settings.get("logistic_c", 1.0)), max_iter=2000)
  elif kind == "mlp":
    classifier = MLPClassifier(
      hidden_layer_sizes=(int(settings.get("mlp_hidden", 512)),),
      alpha=float(settings.get("mlp_weight_decay", 1e-4)),
      max_iter=int(settings.get("mlp_epochs", 300)),
      random_state=seed,
    )
  else:
    raise UserError(f"few-shot probe {kind!r}; available: {PROBES}")
  return make_pipeline(StandardScaler(), classifier)


def probe_f1(kind: str, seed: int, settings, train_x, train_y, test_x, test_y) -> float:
  """Macro F1 (percent) on the test clips of a probe fitted to the training draw."""
  probe = make_probe(kind, seed, settings)
  with warnings.catch_warnings():
    # Tiny draws can stop short of the iteration budget; the score reports the result either way.
    warnings.simplefilter("ignore", ConvergenceWarning)
    probe.fit(train_x, train_y)
  return metrics.macro_f1(test_y, probe.predict(test_x))


def run(context, settings) -> dict:
  corpus = settings.get("dir", "")
  names, train = context.labelled(corpus, settings["train_split"], "few-shot probes need labels")
  _, test = context.labelled(corpus, settings["split"], "few-shot probes need labels")
  sizes = [int(n) for n in settings["sizes"]]
  usable = [n for n in sizes if n <= len(train["label"])]
  probes, spaces = list(settings.get("probes", PROBES)), list(settings.get("spaces", SPACES))
  if unknown := [s for s in spaces if s not in SPACES]:
    raise UserError(f"few-shot spaces {unknown}; available: {list(SPACES)}")
  results = {}
  for space in spaces:
    key = SPACES[space][0]
    for kind in probes:
      scores = []
      for n in usable:
        runs = []
        for seed in range(int(settings["seeds"])):
          chosen = stratified_sample(train["label"], n, np.random.default_rng(seed))
          runs.append(
            probe_f1(kind, seed, settings, train[key][chosen], train["label"][chosen], test[key], test["label"])
          )
        scores.append({"size": n, "mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs})
      results[f"{kind}/{space}"] = scores
  out = {
    "split": settings["split"],
    "train_split": settings["train_split"],
    "corpus": corpus or context.config.data.dir,
    "num_train": len(train["label"]),
    "num_test": len(test["label"]),
    "classes": names,
    "sizes": usable,
    "skipped_sizes": [n for n in sizes if n not in usable],
    "seeds": int(settings["seeds"]),
    "probes": results,
    "chance": metrics.classification_chance(test["label"], len(names))["macro_f1"],
  }
  if path := context.plot_path("fewshot.png"):
    out["plots"] = [plot(out, path)]
  return out


def plot(results: dict, path) -> str:
  figure, (ax,) = plots.new_figure(width=6.5, height=4.5)
  for name, scores in results["probes"].items():
    sizes = np.array([s["size"] for s in scores])
    mean, std = np.array([s["mean"] for s in scores]), np.array([s["std"] for s in scores])
    (line,) = ax.plot(sizes, mean, marker="o", label=name.replace("/", ", "))
    ax.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.axhline(results["chance"], color="gray", linestyle="--", label="chance")
  ax.set_xscale("log")
  ax.minorticks_off()  # Only the sizes themselves are ticked.
  ax.set_xticks(results["sizes"], [str(n) for n in results["sizes"]])
  ax.set_ylim(0, 100)
  ax.set_xlabel("labelled training clips")
  ax.set_ylabel("macro F1 (%)")
  ax.set_title(f"Few-shot probes on '{results['split']}', {results['seeds']} draws per size (mean ± std)")
  ax.legend(title="probe, embedding space", loc="lower right")
  return plots.save(figure, path)


def table(results: dict) -> str:
  lines = [
    f"few-shot probes on '{results['split']}' of {results['corpus']} ({results['num_test']} clips, "
    f"{len(results['classes'])} classes), trained on draws from '{results['train_split']}'; "
    f"macro F1 mean ± std over {results['seeds']} draws [chance {results['chance']:.1f}]",
    f"{'probe / space':22}" + "".join(f"{n:>14}" for n in results["sizes"]),
  ]
  for name, scores in results["probes"].items():
    lines.append(f"{name:22}" + "".join(f"{s['mean']:>8.1f} ±{s['std']:>4.1f}" for s in scores))
  if results["skipped_sizes"]:
    lines.append(f"skipped sizes {results['skipped_sizes']}: more than the {results['num_train']} training clips")
  return "\n".join(lines)
