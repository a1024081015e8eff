"""Embedding-space analysis, ontology triplets and few-shot sampling: pure functions checked against
brute-force loops and hand-derived cases."""

import itertools
import json

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from mclap.errors import UserError
from mclap.evaluation import fewshot, metrics, ontology


def cosine(a, b):
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_centroids_match_a_loop(seed):
  rng = np.random.default_rng(seed)
  labels = np.array([0, 0, 0, 2, 2, 3, 0, 2])  # Class 1 has no clip; class 3 has a single one.
  x = rng.normal(size=(len(labels), 5)) * rng.uniform(0.5, 3, size=(len(labels), 1))
  scores = metrics.leave_one_out_centroid_scores(x, labels, 4)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  for i, c in itertools.product(range(len(x)), range(4)):
    members = [j for j in range(len(x)) if labels[j] == c and j != i]
    if not members:
      assert np.isnan(scores[i, c]), (i, c)
    else:
      assert scores[i, c] == pytest.approx(cosine(x[i], unit[members].mean(axis=0)), abs=1e-12)


def test_positive_negative_similarities_and_margins():
  scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.2, 0.8]])
  positive, negative = metrics.positive_negative_similarities(scores, np.array([0, 1]))
  np.testing.assert_allclose(positive, [0.9, 0.2])
  np.testing.assert_allclose(sorted(negative), [0.1, 0.2, 0.3, 0.8])
  np.testing.assert_allclose(metrics.top_margin(scores), [0.6, 0.6])
  np.testing.assert_allclose(metrics.top_margin(np.array([[0.5, 0.5, 0.1]])), [0.0])  # Tied best: no margin.


TREE = {"keys": {"acoustic": ["piano", "organ"], "synth": {}}, "strings": ["violin", "cello"], "drums": []}


def test_tree_distances_by_hand():
  paths = ontology.leaf_paths(TREE)
  assert list(paths) == ["piano", "organ", "synth", "violin", "cello", "drums"]
  assert paths["piano"] == ("keys", "acoustic", "piano") and paths["drums"] == ("drums",)
  d = ontology.tree_distances(list(paths.values()))
  names = list(paths)
  distance = lambda a, b: d[names.index(a), names.index(b)]  # noqa: E731
  assert distance("piano", "piano") == 0
  assert distance("piano", "organ") == 2  # Siblings.
  assert distance("piano", "synth") == 3  # Up two to "keys", down one.
  assert distance("piano", "violin") == 5  # Through the root.
  assert distance("violin", "drums") == 3 and distance("synth", "drums") == 3
  np.testing.assert_array_equal(d, d.T)


@pytest.mark.parametrize("seed", range(3))
def test_triplet_accuracy_matches_enumerated_triplets(seed):
  paths = ontology.leaf_paths(TREE)
  d = ontology.tree_distances(list(paths.values()))
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(3, 4))[rng.integers(0, 3, size=len(paths))]  # Repeated rows: exactly tied similarities.
  correct, total = 0.0, 0
  for a, p, n in itertools.permutations(range(len(paths)), 3):
    if d[a, p] < d[a, n]:
      total += 1
      sp, sn = cosine(emb[a], emb[p]), cosine(emb[a], emb[n])
      correct += 1.0 if sp > sn else 0.5 if sp == sn else 0.0
  found = ontology.triplet_accuracy(emb, d)
  assert found["num_triplets"] == total
  assert found["accuracy"] == pytest.approx(100 * correct / total)


def test_ontology_errors_name_the_problem(tmp_path):
  with pytest.raises(UserError, match="'piano' appears twice"):
    ontology.leaf_paths({"a": ["piano", "x"], "b": ["piano"]})
  with pytest.raises(UserError, match="at least 3"):
    ontology.leaf_paths(["piano", "organ"])
  with pytest.raises(UserError, match="is not a name"):
    ontology.leaf_paths({"a": [1, 2, 3]})
  bad = tmp_path / "tree.json"
  bad.write_text("{not json")
  with pytest.raises(UserError, match="tree.json: cannot read it as JSON"):
    ontology.load(str(bad))
  flat = tmp_path / "flat.json"
  flat.write_text(json.dumps(["a", "b", "c"]))
  paths = ontology.load(str(flat))
  with pytest.raises(UserError, match="no triplets"):
    ontology.triplet_accuracy(np.eye(3), ontology.tree_distances(list(paths.values())))


@pytest.mark.parametrize("size", [1, 7, 48, 99, 100])
def test_stratified_sample_keeps_class_shares(size):
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat([0, 1, 2, 5], [50, 30, 15, 5]))
  chosen = fewshot.stratified_sample(labels, size, rng)
  assert len(chosen) == size == len(set(chosen)) and np.all(np.diff(chosen) > 0)
  for c, count in zip([0, 1, 2, 5], [50, 30, 15, 5]):
    quota = size * count / len(labels)
    assert np.floor(quota) <= np.sum(labels[chosen] == c) <= np.ceil(quota)
  with pytest.raises(ValueError):
    fewshot.stratified_sample(labels, 101, rng)


@pytest.mark.parametrize("kind", fewshot.PROBES)
def test_probes_learn_separable_classes_and_not_noise(kind):
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 4
  labels = np.arange(400) % 4
  x = centres[labels] + rng.normal(size=(400, 16))
  train, test = slice(0, 80), slice(80, None)
  f1 = fewshot.probe_f1(kind, 0, {}, x[train], labels[train], x[test], labels[test])
  assert f1 > 95
  noise = rng.normal(size=(400, 16))  # Features independent of the labels.
  f1_noise = fewshot.probe_f1(kind, 0, {}, noise[train], labels[train], noise[test], labels[test])
  assert f1_noise < 40  # Chance is 25.
  probe = fewshot.make_probe(kind, 0, {}).fit(x[train], labels[train])
  expected = 100 * sklearn_metrics.f1_score(labels[test], probe.predict(x[test]), average="macro")
  assert f1 == pytest.approx(expected)
