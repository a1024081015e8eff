"""Shared fixtures (one tiny synthetic corpus per test session, configs pointing at it) and helpers."""

import atexit
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from absl import flags

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One compilation cache for the session, set before JAX is imported: tests that build the same
# program (the same config's step in several files) and the jobs they start compile it once, and
# nothing goes into the user's cache. Made by the first process of the session, which removes it
# at exit; the processes started below it that import this file (xdist workers, Grain workers,
# scripts) take that one, as they are often killed before an exit handler could remove their own.
if "MCLAP_TESTS_CACHE" not in os.environ:
  os.environ["MCLAP_TESTS_CACHE"] = tempfile.mkdtemp(prefix="mclap-tests-compilation-cache-")
  atexit.register(shutil.rmtree, os.environ["MCLAP_TESTS_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["MCLAP_TESTS_CACHE"]
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mclap import cli  # noqa: E402
from mclap.data import mel, records  # noqa: E402
from mclap.prepare import synthetic, writer  # noqa: E402

# The training modules are imported where they are used: scripts started by tests import this
# file (for `make_tiny_config`), Grain workers of such scripts too, and must start quickly.

flags.FLAGS.mark_as_parsed()  # Grain reads its absl flags; jobs parse them in `cli.run`.

TINY_MEL = dict(mel.default_mel_config(), n_mels=32)
TINY_CLIPS = 64
TINY_SECONDS = 3.0


def tone(seconds, rate, channels=1, freq=440.0):
  """A sine with a little noise (never silent), [samples] or [samples, channels]."""
  t = np.arange(int(seconds * rate)) / rate
  wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).normal(size=t.size)
  return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def hub_cache(model_dir, cache, repo="org/model"):
  """`model_dir` as `huggingface-cli download` leaves a model in its cache without `--local-dir`:
  `models--org--model/` with the files in `blobs/`, linked from `snapshots/<commit>/`, and
  `refs/main` naming that commit. Returns that folder (what users pass)."""
  folder = cache / f"models--{repo.replace('/', '--')}"
  commit = "0123456789abcdef0123456789abcdef01234567"
  (folder / "blobs").mkdir(parents=True)
  (folder / "snapshots" / commit).mkdir(parents=True)
  (folder / "refs").mkdir()
  (folder / "refs" / "main").write_text(commit)
  for n, path in enumerate(sorted(pathlib.Path(model_dir).iterdir())):
    shutil.copy(path, folder / "blobs" / f"blob{n}")
    (folder / "snapshots" / commit / path.name).symlink_to(f"../../blobs/blob{n}")
  return folder


def prepare(*args):
  """Runs `python -m mclap.data.prepare` in-line (no workers) with 32 mels; must succeed."""
  result = subprocess.run(
    [sys.executable, "-m", "mclap.data.prepare", "--num_workers", "0", "--mel.n_mels", "32", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  return result


def free_port() -> int:
  """A local port nobody listens on (a multi-process job's coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def corpus_records(corpus, split):
  reader = records.CorpusReader(corpus, split, require_captions=False)
  return {r["id"]: r for r in (reader[i] for i in range(len(reader)))}


def corpus_rejects(corpus):
  lines = (pathlib.Path(corpus) / records.REJECTS_FILE).read_text().splitlines()
  return {r["id"]: r["reason"] for r in map(json.loads, lines)}


def build_synthetic(output, num_clips=TINY_CLIPS, seconds=TINY_SECONDS, seed=0, **kwargs):
  splits = synthetic.plan_clips(num_clips, seed, seconds)
  work_fn = synthetic.make_record_fn(TINY_MEL)
  kwargs = {"num_workers": 0, "shard_size": 16, "show_progress": False, **kwargs}
  return writer.write_corpus(
    output,
    splits,
    work_fn,
    mel_config=TINY_MEL,
    source="synthetic",
    extra_info={"label_names": synthetic.LABEL_NAMES},
    **kwargs,
  )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("tiny_corpus")
  build_synthetic(out)
  return out


def make_tiny_config(spec, corpus):
  """A config file's variant shrunk to the tiny corpus (and its mel settings): 2 s crops, batches
  of 8, no workers."""
  config = cli.load_config(str(ROOT / spec))
  config.data.dir = str(corpus)
  config.data.mel.update(TINY_MEL)
  config.data.crop_seconds = 2.0
  config.data.num_workers = 0
  config.data.eval_batch_size = 8
  config.train.batch_size = 8
  return config


@pytest.fixture
def tiny_config(tiny_corpus):
  return make_tiny_config("configs/muscall.py:demo", tiny_corpus)


# The tests that read `trained_demo` run in one worker process (`pytest -n N --dist loadgroup`),
# which trains it once.
USES_TRAINED_DEMO = pytest.mark.xdist_group("trained_demo")


@pytest.fixture(scope="session")
def trained_demo(tiny_corpus, tmp_path_factory):
  """(config, workdir) of one 4-step in-process run of `configs/muscall.py:demo` on the tiny
  corpus (`small`), with the retrieval evaluator every 2 steps, for every test that needs a
  trained workdir: they read it (writing at most its eval/ folder). Adam's eps is 1, so that runs
  on other device counts take the same steps (test_multihost) without Adam amplifying rounding."""
  config = small(make_tiny_config("configs/muscall.py:demo", tiny_corpus))
  from mclap import train

  config.evals.retrieval.every = 2
  config.optim.eps = 1.0
  config.train.update(profile_after=1, profile_steps=2)  # Steps 2-3 traced (test_trainer).
  workdir = tmp_path_factory.mktemp("trained_demo")
  train.train(config, workdir)
  return config, workdir


def small(config, steps=4):
  """A short run: `steps` steps, logged every step, checkpoints every 2, validation at the end."""
  config.train.update(steps=steps, log_every=1, eval_every=steps, ckpt_every=2, seed=0)
  config.optim.warmup_steps = 2
  return config


def fake_record(item):
  """Items name what to produce: good records, broken ones, crashes, rejects, duplicates."""
  kind, i = item
  mel = np.full((TINY_MEL["n_mels"], 4), float(i), np.float32)
  if kind == "crash":
    raise OSError("cannot decode")
  if kind == "interrupt":  # Ctrl-C reaching the job's own process.
    raise KeyboardInterrupt
  if kind == "sigint":  # Ctrl-C reaching a worker process, as a terminal sends it to the whole group.
    os.kill(os.getpid(), signal.SIGINT)
  if kind == "reject":
    return writer.Reject(id=f"x{i}", reason="silent")
  if kind == "nan":
    mel[0, 0] = np.nan
  if kind == "shape":
    mel = mel[:3]
  captions = [" ", ""] if kind == "empty" else [f"c{i}"]
  return {"id": "dup" if kind == "dup" else f"x{i}", "mel": mel, "captions": captions, "tags": [kind]}


def fit_one_batch(config, steps=5):
  """Steps on one fixed batch (8 devices): the loss must fall. Returns the losses and states."""
  import jax

  from mclap import parallel
  from mclap.data import pipeline
  from mclap.training import trainer

  config.optim.update(warmup_steps=0, schedule="constant")
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  tx = trainer.make_optimizer(config, steps)
  model_def, state = trainer.init_state(config, mesh, tx)
  first = jax.device_get(state)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  batch = parallel.to_global(pipeline.train_dataset(config)[0], mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, first, state, model_def
