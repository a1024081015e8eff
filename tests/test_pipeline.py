import itertools
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from mclap.data import pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 40), length=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_crop_or_pad_against_numpy(frames, length, seed):
  rng = np.random.default_rng(seed)
  mel = rng.normal(size=(3, frames)).astype(np.float32)
  start = pipeline.crop_start(frames, length, rng)
  crop, valid = pipeline.crop_or_pad(mel, length, start, -100.0)
  padded = np.concatenate([mel, np.full((3, length), -100.0, np.float32)], axis=1)
  np.testing.assert_array_equal(crop, padded[:, start : start + length])
  assert valid == min(length, frames - start)
  assert 0 <= start <= max(frames - length, 0)
  assert pipeline.crop_start(frames, length, None) == max(frames - length, 0) // 2


def test_evenly_spaced_crops_span_the_clip():
  assert pipeline.evenly_spaced_starts(100, 20, 5) == [0, 20, 40, 60, 80]
  assert pipeline.evenly_spaced_starts(25, 20, 3) == [0, 2, 5]  # Overlapping; 2.5 rounds to even.
  assert pipeline.evenly_spaced_starts(10, 20, 3) == [0, 0, 0]  # Shorter than a crop: all padded alike.


def test_eval_batches_stack_the_crops(tiny_config):
  tiny_config.data.eval_crops = 3
  batch = pipeline.eval_dataset(tiny_config, "test", with_text=False)[0]
  assert batch["mel"].shape[:2] == (tiny_config.data.eval_batch_size, 3) and batch["mel"].ndim == 4
  tiny_config.data.eval_crops = 0
  with pytest.raises(ConfigError, match="eval_crops=0"):
    pipeline.eval_dataset(tiny_config, "test")


def _batches(ds, n):
  return [ds[i] for i in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_shapes(tiny_config):
  batch = pipeline.train_dataset(tiny_config)[0]
  assert batch["mel"].shape == (8, 32, 63) and batch["mel"].dtype == np.float16
  assert batch["tokens"].shape == batch["token_mask"].shape == (8, 32)
  assert batch["tags"].shape[0] == 8 and batch["tags"].sum(1).min() == 8  # Every clip has 8 tags.
  assert (batch["tokens"][:, 0] == 101).all()  # [CLS]


def test_same_seed_same_batches_other_seed_other_batches(tiny_config):
  a = _batches(pipeline.train_dataset(tiny_config), 8)
  _assert_same(a, _batches(pipeline.train_dataset(tiny_config), 8))
  tiny_config.train.seed = 1
  b = _batches(pipeline.train_dataset(tiny_config), 8)
  assert not np.array_equal(a[0]["index"], b[0]["index"])


def test_epochs_cover_the_split_and_reshuffle(tiny_config):
  n = len(records.CorpusReader(tiny_config.data.dir, "train"))
  tiny_config.train.batch_size = 1
  order = [int(b["index"][0]) for b in _batches(pipeline.train_dataset(tiny_config), 2 * n)]
  assert sorted(order[:n]) == sorted(order[n:]) == list(range(n))
  assert order[:n] != order[n:]


def test_restored_iterator_continues_identically(tiny_config):
  ds = pipeline.train_dataset(tiny_config)
  it = pipeline.iterate(ds, num_workers=0, prefetch=tiny_config.data.prefetch)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  restored = pipeline.iterate(pipeline.train_dataset(tiny_config), num_workers=0, prefetch=2)
  restored.set_state(state)
  _assert_same([next(restored) for _ in range(4)], expected)


def test_the_iterator_builds_only_a_few_batches_ahead(tiny_config):
  """Grain's default read options keep 500 elements in flight, and an element here is a batch: a
  job held 500 batches per input process (about 20 GB of 20 s, 128-band crops at batch 256), and
  on a small host the workers building them took the cores from the step."""
  built = []
  ds = pipeline.train_dataset(tiny_config).map(lambda batch: built.append(1) or batch)
  it = pipeline.iterate(ds, num_workers=0, prefetch=tiny_config.data.prefetch)
  try:
    next(it)
    time.sleep(1.0)
    assert len(built) <= tiny_config.data.prefetch + 1
  finally:
    it.close()
  with pytest.raises(ConfigError, match="prefetch=0"):
    pipeline.iterate(ds, num_workers=0, prefetch=0)


def test_worker_processes_give_the_same_batches(tiny_config):
  tiny_config.data.augment.update(noise_prob=0.5, time_masks=1, mixup_prob=0.5)  # Augmenters travel too.
  ds = pipeline.train_dataset(tiny_config)
  it = pipeline.iterate(ds, num_workers=2, prefetch=tiny_config.data.prefetch)
  try:
    _assert_same([next(it) for _ in range(6)], _batches(ds, 6))
  finally:
    it.close()


def test_workers_leave_stop_signals_to_the_trainer(tiny_config):
  """Ctrl-C in a terminal (SIGINT) and Slurm's SIGTERM reach every process of the job: the workers
  must go on delivering while the trainer finishes its step and saves, and stop when it closes
  them (they died with a KeyboardInterrupt traceback, leaking their batches in shared memory)."""
  ds = pipeline.train_dataset(tiny_config)
  before = set(multiprocessing.active_children())
  it = pipeline.iterate(ds, num_workers=2, prefetch=tiny_config.data.prefetch)
  try:
    got = [next(it), next(it)]  # One from each worker: both have started.
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert len(workers) == 2
    for signum in (signal.SIGINT, signal.SIGTERM):
      for worker in workers:
        os.kill(worker.pid, signum)
    time.sleep(1.0)
    assert all(w.is_alive() for w in workers)
    got += [next(it) for _ in range(4)]
  finally:
    it.close()
  _assert_same(got, _batches(ds, 6))
  assert not any(w.is_alive() for w in workers)


def test_processes_read_disjoint_shares_of_the_global_batch(tiny_config):
  global_batches = _batches(pipeline.train_dataset(tiny_config), 4)
  shares = [_batches(pipeline.train_dataset(tiny_config, process_index=p, process_count=2), 4) for p in range(2)]
  for step in range(4):
    merged = np.stack([shares[0][step]["index"], shares[1][step]["index"]], 1).reshape(-1)
    np.testing.assert_array_equal(merged, global_batches[step]["index"])


def test_eval_sees_every_record_once_in_order_with_padding_masked(tiny_config):
  n = len(records.CorpusReader(tiny_config.data.dir, "test"))
  tiny_config.data.eval_batch_size = 6
  assert n % 6  # The last batch needs padding.
  for process_count in (1, 2):
    per_process = [
      list(pipeline.eval_dataset(tiny_config, "test", process_index=p, process_count=process_count))
      for p in range(process_count)
    ]
    assert len({len(b) for b in per_process}) == 1  # Every process runs the same number of steps.
    indices = [int(i) for b in itertools.chain(*per_process) for i, v in zip(b["index"], b["valid"]) if v]
    assert sorted(indices) == list(range(n))
  batches = list(pipeline.eval_dataset(tiny_config, "test"))
  assert [int(i) for b in batches for i, v in zip(b["index"], b["valid"]) if v] == list(range(n))
  reader = records.CorpusReader(tiny_config.data.dir, "test")
  first = reader[0]
  start = (first["mel"].shape[1] - 63) // 2
  np.testing.assert_array_equal(batches[0]["mel"][0], first["mel"][:, start : start + 63])


def test_mel_settings_mismatch_is_explained(tiny_config):
  tiny_config.data.mel.n_mels = 64
  with pytest.raises(records.CorpusError, match=r"n_mels: corpus 32, config 64.*configs/finetune.py:BUNDLE.*--mel"):
    pipeline.train_dataset(tiny_config)


def test_batch_not_divisible_by_processes(tiny_config):
  tiny_config.train.batch_size = 9
  with pytest.raises(ValueError, match="batch size 9 is not divisible by the 2 processes"):
    pipeline.train_dataset(tiny_config, process_count=2)


def test_empty_split_is_explained(tiny_config, tmp_path):
  corpus = tmp_path / "corpus"
  shutil.copytree(tiny_config.data.dir, corpus)
  info = json.loads((corpus / records.INFO_FILE).read_text())
  info["splits"]["empty"] = {"count": 0, "shards": []}
  (corpus / records.INFO_FILE).write_text(json.dumps(info))
  tiny_config.data.dir = str(corpus)
  with pytest.raises(records.CorpusError, match="split 'empty' of .* is empty"):
    pipeline.eval_dataset(tiny_config, "empty")


def _token_rows(tokenizer, texts):
  return {tuple(row) for row in tokenizer(texts)[0]}


def _records(config):
  reader = records.CorpusReader(config.data.dir, config.data.train_split)
  return [reader[i] for i in range(len(reader))]


def test_several_sentences_per_clip_are_distinct_positives(tiny_config):
  tiny_config.data.update(positives="sentences", texts_per_clip=3)
  ds = pipeline.train_dataset(tiny_config)
  tokenizer = tokenizer_lib.for_config(tiny_config)
  recs = _records(tiny_config)
  for batch in _batches(ds, 3):
    assert batch["tokens"].shape == batch["token_mask"].shape == (8, 3, 32)
    for index, tokens in zip(batch["index"], batch["tokens"]):
      sentences = pipeline.positives(recs[index]["captions"], "sentences")
      rows = [tuple(r) for r in tokens]
      assert set(rows) <= _token_rows(tokenizer, sentences)
      assert len(set(rows)) == min(3, len(set(sentences)))


@pytest.mark.parametrize("unit", ["tags", "sentences"])
def test_negative_texts_do_not_describe_the_clip(tiny_config, unit, monkeypatch):
  """Drawn from the corpus's texts.jsonl: each example reads its own record and no other (another
  record's mels were read for its captions: about 30% of a worker's time on 30 s clips)."""
  tiny_config.data.update(positives=unit, other_text="negative")
  tokenizer = tokenizer_lib.for_config(tiny_config)
  recs = _records(tiny_config)
  own = lambda r: r["tags"] if unit == "tags" else pipeline.positives(r["captions"], unit)  # noqa: E731
  others = set()
  read, reads = records.CorpusReader.__getitem__, []
  monkeypatch.setattr(records.CorpusReader, "__getitem__", lambda self, i: reads.append(i) or read(self, i))
  batches = _batches(pipeline.train_dataset(tiny_config), 4)
  assert len(reads) == 4 * 8
  for batch in batches:
    for index, tokens, negative in zip(batch["index"], batch["tokens"], batch["other_tokens"]):
      assert tuple(tokens) in _token_rows(tokenizer, own(recs[index]))
      assert tuple(negative) not in _token_rows(tokenizer, own(recs[index]))
      others.add(tuple(negative))
  everything = set().union(*(_token_rows(tokenizer, own(r)) for r in recs))
  assert others <= everything and len(others) > 8


def test_match_texts_are_true_pairs_half_of_the_time(tiny_config):
  tiny_config.data.update(positives="sentences", other_text="match")
  tokenizer = tokenizer_lib.for_config(tiny_config)
  recs = _records(tiny_config)
  matches = []
  for batch in _batches(pipeline.train_dataset(tiny_config), 25):
    for index, other, match in zip(batch["index"], batch["other_tokens"], batch["other_match"]):
      is_own = tuple(other) in _token_rows(tokenizer, pipeline.positives(recs[index]["captions"], "sentences"))
      assert is_own == bool(match)
      matches.append(match)
  assert abs(np.mean(matches) - 0.5) < 0.1  # 200 draws: 4 standard deviations is 0.14.


def _children(pid: int) -> list[int]:
  """Processes whose parent is `pid` (from /proc)."""
  found = []
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.parent.name))
  return found


def _alive(pid: int) -> bool:
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_a_worker_starting_after_its_trainer_died_ends_itself():
  """A worker still starting when its parent was killed (a busy machine: its imports are slow) is
  adopted before its start-up runs, and must not take the adoptive process for its parent."""
  code = "from mclap.data import pipeline; import time; pipeline.start_worker(0, 1, parent=-1); time.sleep(60)"
  started = time.time()
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=50, capture_output=True, text=True)
  assert (result.returncode, result.stderr) == (1, "") and time.time() - started < 50  # Ended by its watch.


def test_grain_workers_exit_when_their_trainer_is_killed(tiny_corpus, tmp_path):
  """kill -9 of a process reading through Grain workers: the workers (and multiprocessing's
  resource tracker) must not live on as orphans."""
  script = tmp_path / "reader.py"
  script.write_text(
    "import sys, time\n"
    f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    "from conftest import make_tiny_config\n"
    "from mclap.data import pipeline\n"
    "if __name__ == '__main__':\n"
    f"  config = make_tiny_config('configs/muscall.py:demo', {str(tiny_corpus)!r})\n"
    "  batches = pipeline.iterate(pipeline.train_dataset(config), num_workers=2, prefetch=2)\n"
    "  next(batches)\n"
    "  print('reading', flush=True)\n"
    "  time.sleep(600)\n"
  )
  reader = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  children = []
  try:
    assert reader.stdout.readline().strip() == "reading"
    children = _children(reader.pid)
    assert len(children) >= 2  # The two workers (and the resource tracker).
    reader.kill()
    reader.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(map(_alive, children)):
      time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]
  finally:
    reader.kill()
    for pid in filter(_alive, children):
      os.kill(pid, signal.SIGKILL)
