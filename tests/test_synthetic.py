import collections

import numpy as np
from conftest import TINY_MEL

from mclap.data import records
from mclap.prepare import synthetic


def test_same_seed_same_clip_and_different_seed_different_clip():
  spec = synthetic.ClipSpec("c", 7, 0, "flute", 2.0)
  a, b = synthetic.make_record(spec, TINY_MEL), synthetic.make_record(spec, TINY_MEL)
  np.testing.assert_array_equal(a["mel"], b["mel"])
  assert a["captions"] == b["captions"] and a["tags"] == b["tags"]
  other = synthetic.make_record(synthetic.ClipSpec("c", 7, 1, "flute", 2.0), TINY_MEL)
  assert not np.array_equal(a["mel"], other["mel"])


def test_plan_is_balanced_stratified_and_deterministic():
  plan = synthetic.plan_clips(803, seed=3, seconds=1.0)
  assert plan == synthetic.plan_clips(803, seed=3, seconds=1.0)
  every = [s for split in plan.values() for s in split]
  assert sorted(s.index for s in every) == list(range(803))
  counts = collections.Counter(s.instrument for s in every)
  assert set(counts) == set(synthetic.LABEL_NAMES) and max(counts.values()) - min(counts.values()) <= 1
  assert [len(plan[k]) for k in ("train", "validation", "test")] == [643, 80, 80]
  for split in ("validation", "test"):
    per_label = collections.Counter(s.instrument for s in plan[split])
    assert min(per_label.values()) >= 9  # Every instrument is evaluated.


def test_captions_and_tags_describe_the_clip():
  for index in range(40):
    spec = synthetic.ClipSpec("c", index, 0, synthetic.LABEL_NAMES[index % 8], 0.5)
    attrs = synthetic.draw_attributes(spec, np.random.default_rng([0, index]))
    rec = synthetic.make_record(spec, TINY_MEL)
    assert rec["tags"] == synthetic.tags_of(attrs)
    assert rec["label"] == synthetic.LABEL_NAMES.index(spec.instrument)
    assert attrs["mood"] == synthetic.MOODS[(attrs["mode"], attrs["tempo"])]
    names = synthetic.INSTRUMENTS[spec.instrument].names[attrs["register"]]
    assert len(set(rec["captions"])) == 3
    for caption in rec["captions"]:
      assert any(name in caption.lower() for name in names), caption


def test_instruments_are_learnable_from_the_mels(tiny_corpus):
  """A nearest-centroid classifier on time-averaged mels beats chance (1/8) by far."""

  def features(split):
    reader = records.CorpusReader(tiny_corpus, split)
    recs = [reader[i] for i in range(len(reader))]
    x = np.stack([r["mel"].astype(np.float32).mean(1) for r in recs])
    x -= x.max(1, keepdims=True)  # Remove loudness; keep the spectral shape (timbre).
    return x, np.array([r["label"] for r in recs])

  x_train, y_train = features("train")
  x_test, y_test = (
    np.concatenate([features("validation")[0], features("test")[0]]),
    np.concatenate([features("validation")[1], features("test")[1]]),
  )
  centroids = np.stack([x_train[y_train == k].mean(0) for k in range(8)])
  predicted = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert (predicted == y_test).mean() >= 0.5
