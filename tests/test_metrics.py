import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mclap import metrics


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
