import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sklearn_metrics

from mclap import evaluation
from mclap.evaluation import metrics


def brute_force_ranks(scores, targets):
  """Position of the target in a stable descending sort (ties: lower index first)."""
  return np.array([list(np.argsort(-row, kind="stable")).index(t) + 1 for row, t in zip(scores, targets)])


@settings(max_examples=50, deadline=None)
@given(q=st.integers(1, 12), n=st.integers(1, 15), levels=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_ranks_match_a_stable_sort_with_ties(q, n, levels, seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, size=(q, n)).astype(np.float32)  # Few levels: many ties.
  targets = rng.integers(0, n, size=q)
  np.testing.assert_array_equal(metrics.target_ranks(scores, targets), brute_force_ranks(scores, targets))


def test_metrics_against_hand_computed_ranks():
  out = metrics.retrieval_metrics(np.array([1, 2, 7, 11, 40]))
  assert out["R@1"] == pytest.approx(20.0) and out["R@5"] == pytest.approx(40.0) and out["R@10"] == pytest.approx(60.0)
  assert out["mAP@10"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 7) / 5)
  assert out["median_rank"] == 7 and out["mean_rank"] == pytest.approx(61 / 5)


def test_directions_are_named_correctly():
  """Text 0 matches audio 0 exactly, but audio 1 is closer to text 0 than to its own text."""
  audio = np.array([[1.0, 0.0], [0.6, 0.8]])
  text = np.array([[1.0, 0.0], [1.0, 0.0]])
  out = metrics.text_audio_retrieval(audio, text)
  # Text→audio: text 0 finds audio 0 first; text 1 (same vector) ranks audio 1 second.
  assert out["text_to_audio"]["R@1"] == 50.0 and out["text_to_audio"]["mean_rank"] == 1.5
  # Audio→text: audio 0 ranks text 0 first; audio 1 scores both texts 0.6, tie -> text 0 first.
  assert out["audio_to_text"]["mean_rank"] == 1.5


def test_random_scores_sit_near_chance():
  rng = np.random.default_rng(0)
  n = 400
  ranks = metrics.target_ranks(rng.normal(size=(n, n)), np.arange(n))
  out, chance = metrics.retrieval_metrics(ranks), metrics.chance_metrics(n)
  assert abs(out["R@10"] - chance["R@10"]) < 2.5 and abs(out["median_rank"] - chance["median_rank"]) < 40


@pytest.mark.parametrize("seed", range(6))
def test_roc_and_pr_auc_match_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 60))
  labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
  labels[:2] = [0, 1]  # Both classes present.
  scores = np.round(rng.normal(size=n), 1 if seed % 2 else 3)  # Coarse rounding: many ties.
  np.testing.assert_allclose(metrics.roc_auc(labels, scores), sklearn_metrics.roc_auc_score(labels, scores))
  np.testing.assert_allclose(
    metrics.average_precision(labels, scores), sklearn_metrics.average_precision_score(labels, scores)
  )


def test_auc_hand_cases():
  assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # One tie: half credit.
  assert metrics.roc_auc([1, 0, 1], [3.0, 2.0, 1.0]) == 0.5
  np.testing.assert_allclose(metrics.average_precision([1, 0, 1], [3.0, 2.0, 1.0]), (1 + 2 / 3) / 2)
  assert np.isnan(metrics.roc_auc([0, 0], [1.0, 2.0])) and np.isnan(metrics.average_precision([0, 0], [1.0, 2.0]))


def test_tagging_metrics_both_ways_and_undefined_tags_reported():
  rng = np.random.default_rng(0)
  labels = (rng.random((40, 6)) < 0.3).astype(int)
  labels[:, 4] = 0  # A tag nobody has.
  labels[:, 5] = 1  # A tag everybody has.
  scores = rng.normal(size=(40, 6))
  found = metrics.tagging_metrics(labels, scores, axis=0)
  assert found["undefined"] == [4, 5]
  expected = [sklearn_metrics.roc_auc_score(labels[:, j], scores[:, j]) for j in range(4)]
  np.testing.assert_allclose(found["roc_auc"], 100 * np.mean(expected))
  expected = [sklearn_metrics.average_precision_score(labels[:, j], scores[:, j]) for j in range(4)]
  np.testing.assert_allclose(found["pr_auc"], 100 * np.mean(expected))
  annotation = metrics.tagging_metrics(labels, scores, axis=1)
  rows = [i for i in range(40) if 0 < labels[i].sum() < 6]
  expected = [sklearn_metrics.roc_auc_score(labels[i], scores[i]) for i in rows]
  np.testing.assert_allclose(annotation["roc_auc"], 100 * np.mean(expected))
  assert annotation["undefined"] == [i for i in range(40) if i not in rows]


def test_top_k_accuracy_and_macro_f1_match_sklearn():
  rng = np.random.default_rng(1)
  scores, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, size=50)
  for k in (1, 2, 3):
    expected = sklearn_metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
    np.testing.assert_allclose(metrics.top_k_accuracy(scores, labels, k), 100 * expected)
  predictions = rng.integers(0, 9, size=50)  # Classes 7 and 8 predicted but absent.
  predictions[predictions == 3] = 2  # Class 3 never predicted.
  expected = sklearn_metrics.f1_score(labels, predictions, average="macro", zero_division=0)
  np.testing.assert_allclose(metrics.macro_f1(labels, predictions), 100 * expected)
  # Ties among the scores: the lower class index ranks first.
  assert metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]), 1) == 50.0


def test_joint_space_geometry_on_constructed_embeddings():
  rng = np.random.default_rng(0)
  basis = np.eye(6)
  # Captions that are their clips: no gap, perfect alignment, every caption nearest its own clip.
  audio = rng.standard_normal((40, 6))
  assert metrics.modality_gap(audio, 3 * audio) == pytest.approx(0.0, abs=1e-12)
  assert metrics.alignment(audio, 3 * audio) == pytest.approx(0.0, abs=1e-12)
  assert metrics.own_nearest_fraction(audio, 3 * audio) == 1.0
  # Clips on +e0, captions on -e0 beside them: the centroids 2 apart; each pair opposite, ||.||² = 4.
  audio, text = np.tile(basis[0], (5, 1)), np.tile(-basis[0], (5, 1))
  assert metrics.modality_gap(audio, text) == pytest.approx(2.0)
  assert metrics.alignment(audio, text) == pytest.approx(4.0)
  assert metrics.own_nearest_fraction(audio, text) == 0.2  # All tie: only the first caption finds its own.
  # Uniformity: all equal -> log 1 = 0; the 6 vertices of an octahedron: pairs at distance² 2 (12 of 15)
  # and 4 (3 of 15), so log((12 e^-4 + 3 e^-8) / 15).
  assert metrics.uniformity(np.tile(basis[1], (4, 1))) == pytest.approx(0.0, abs=1e-12)
  octahedron = np.concatenate([basis[:3], -basis[:3]])
  assert metrics.uniformity(octahedron) == pytest.approx(np.log((12 * np.exp(-4) + 3 * np.exp(-8)) / 15))
  # Effective rank: k orthogonal directions of equal weight -> k; one direction -> 1.
  assert metrics.effective_rank(np.concatenate([basis[:3], 2 * basis[:3]])) == pytest.approx(3.0)
  assert metrics.effective_rank(np.outer(rng.standard_normal(9), basis[2])) == pytest.approx(1.0)


def test_the_geometry_evaluator_reports_a_splits_joint_space():
  """On constructed embeddings (the evaluator reads only a context's `embeddings`): captions equal
  to their clips, pre-joint features spanning 2 (audio) and 3 (text) equal directions."""
  rng = np.random.default_rng(1)
  audio = metrics.normalize(rng.standard_normal((30, 8)))
  basis = np.eye(5)
  emb = {
    "audio": audio,
    "text": audio.copy(),
    "audio_features": np.tile(basis[:2], (15, 1)),
    "text_features": np.tile(basis[:3], (10, 1)),
  }
  context = types.SimpleNamespace(embeddings=lambda split: emb)
  results = evaluation.REGISTRY["geometry"].run(context, dict(split="test", max_points=10, seed=0))
  assert results["modality_gap"] == pytest.approx(0.0, abs=1e-9) and results["alignment"] == pytest.approx(0.0)
  assert results["own_nearest"] == 100.0 and results["num_items"] == 30
  assert results["effective_rank"]["audio_features"] == pytest.approx(2.0)
  assert results["effective_rank"]["text_features"] == pytest.approx(3.0)
  subset = np.sort(np.random.default_rng(0).permutation(30)[:10])  # Uniformity over 10 of the 30.
  assert results["uniformity"]["audio"] == pytest.approx(metrics.uniformity(audio[subset]))
  assert "modality gap 0.000" in evaluation.REGISTRY["geometry"].table(results)
