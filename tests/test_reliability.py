"""Training survives what happens to long jobs: kill -9, SIGTERM/SIGINT, damaged checkpoints,
non-finite steps, a full disk, an unwritable workdir."""

import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, make_tiny_config, small

from mclap import parallel, train
from mclap.data import records
from mclap.errors import ConfigError, UserError, first_line
from mclap.models import weights
from mclap.training import checkpoints, trainer

pytestmark = pytest.mark.slow

STEPS = 40
CKPT_EVERY = 4


def _args(corpus, workdir, steps=STEPS):
  overrides = {
    "data.dir": corpus,
    "data.mel.n_mels": 32,
    "data.crop_seconds": 2.0,
    "data.num_workers": 0,
    "data.eval_batch_size": 8,
    "data.token_bucket": 0,  # One step shape: one compilation per process.
    "train.batch_size": 8,
    "train.steps": steps,
    "train.log_every": 1,
    "train.eval_every": steps,
    "train.ckpt_every": CKPT_EVERY,
    "optim.warmup_steps": 2,
    "train.ema_decay": 0.9,  # Resumes exactly too.
  }
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  return [sys.executable, "-m", "mclap.train", "--config", "configs/muscall.py:demo", *flags, "--workdir", str(workdir)]


class Run:
  """A training process whose output is read line by line; runs given the same `compile_cache`
  compile once (the executables are the same, so are the results)."""

  def __init__(self, args, compile_cache=None):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    if compile_cache:
      args = [*args, f"--compilation_cache={compile_cache}"]
      env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    self.process = subprocess.Popen(
      args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    self.lines = []

  def wait_for_step(self, step: int) -> int:
    """Reads output until a logged train step >= `step`; returns that step."""
    for line in self.process.stdout:
      self.lines.append(line)
      if line.startswith("[train step "):
        seen = int(line.split()[2].rstrip("]"))
        if seen >= step:
          return seen
    raise AssertionError(f"the run ended before step {step}:\n{''.join(self.lines)}")

  def finish(self, timeout=600) -> tuple[int, str]:
    out, _ = self.process.communicate(timeout=timeout)
    self.lines.append(out)
    return self.process.returncode, "".join(self.lines)


def _final_state(workdir, step=STEPS):
  return jax.device_get(weights.saved_state(pathlib.Path(workdir) / "checkpoints", step))


def _assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("compile_cache")


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus, tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  code, out = Run(_args(tiny_corpus, workdir), compile_cache).finish()
  assert code == 0, out
  assert any(compile_cache.iterdir())  # The runs below load the step from there.
  return workdir


def test_killed_and_stopped_runs_resume_to_bit_identical_parameters(
  tiny_corpus, uninterrupted, compile_cache, tmp_path
):
  """One workdir through kill -9 (anywhere: mid-step, mid-save, mid-log), SIGTERM, a second
  kill -9 and SIGINT, then a run to the end: the stop signals save a checkpoint and exit 0, and
  the end state equals the uninterrupted run's, bit for bit, with every step logged once."""
  rng = np.random.default_rng(0)
  interruptions = [
    (signal.SIGKILL, int(rng.integers(CKPT_EVERY + 1, STEPS // 4))),  # After a first checkpoint.
    (signal.SIGTERM, STEPS // 4 + 2),
    (signal.SIGKILL, int(rng.integers(STEPS // 2, 3 * STEPS // 4 - 2))),
    (signal.SIGINT, 3 * STEPS // 4),
  ]
  resumed_at, stopped_at = [], []
  for sig, at in interruptions:
    run = Run(_args(tiny_corpus, tmp_path), compile_cache)
    run.wait_for_step(at)
    run.process.send_signal(sig)
    code, out = run.finish()
    resumed_at += [int(line.split()[-1]) for line in out.splitlines() if line.startswith("resumed from")]
    if sig == signal.SIGKILL:
      assert code == -signal.SIGKILL
      continue
    assert code == 0, out
    message = next(line for line in out.splitlines() if line.startswith("stopped by"))
    assert message.startswith(f"stopped by {sig.name} after step ") and "Run the same command to resume" in message
    stopped_at.append(int(message.split()[5]))
    assert stopped_at[-1] in checkpoints.manager(tmp_path / "checkpoints", None).all_steps()
  code, out = Run(_args(tiny_corpus, tmp_path), compile_cache).finish()
  assert code == 0, out
  resumed_at += [int(line.split()[-1]) for line in out.splitlines() if line.startswith("resumed from")]
  assert len(resumed_at) == 4 and resumed_at == sorted(resumed_at) and 0 < resumed_at[0] and resumed_at[-1] < STEPS
  assert f"resumed from {tmp_path / 'checkpoints'} at step {stopped_at[-1]}" in out

  final = _final_state(tmp_path)
  _assert_bit_identical(_final_state(uninterrupted), final)
  # Evaluation and export read the parameters' moving average.
  model = weights.read_model(tmp_path)[0]
  for name in ("audio_projection", "text_projection"):
    average, trained = (final[group]["model"][name]["kernel"]["value"] for group in ("ema", "params"))
    np.testing.assert_array_equal(getattr(model, name).kernel[...], average)
    assert not np.array_equal(average, trained)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, STEPS + 1))  # Replayed steps once.


def test_failed_checkpoint_write_is_reported_and_the_previous_one_stays_intact(
  tiny_corpus, uninterrupted, compile_cache, tmp_path
):
  """A file-size limit makes every large write fail with EFBIG, as a full disk fails with ENOSPC."""
  shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
  limit = 256 * 1024  # Above the logs, below the checkpoint's array file.
  train_args = _args(tiny_corpus, tmp_path, steps=STEPS + 3 * CKPT_EVERY)
  with_limit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
  with_limit += "os.execv(sys.executable, sys.argv[1:])"
  args = [sys.executable, "-c", with_limit, *train_args]
  # The save of step STEPS + CKPT_EVERY fails; training stops before the final validation.
  code, out = Run(args, compile_cache).finish()
  assert code != 0, out
  # Orbax's writer threads print their own tracebacks around it; the job's verdict is one line.
  errors = [line for line in out.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, out
  error = errors[0]
  assert error.startswith(f"error: writing a checkpoint to {tmp_path / 'checkpoints'} failed (ValueError:")
  assert "File too large" in error, out
  assert f"complete checkpoints there: steps [{STEPS - 2 * CKPT_EVERY}, {STEPS - CKPT_EVERY}, {STEPS}]" in error
  assert "run the same command to resume" in error
  _assert_bit_identical(_final_state(uninterrupted), _final_state(tmp_path))


def test_a_long_storage_error_keeps_its_reason_in_one_line():
  path = "/data/runs/" + "x" * 200
  at_end = OSError(f"Error writing local file {path}: Failed to write 1024 bytes: File too large [os_error_code='27']")
  assert first_line(at_end).endswith("File too large [os_error_code='27']") and len(first_line(at_end)) < 310
  # Followed by more context than the kept tail (a spec, source locations): it was cut out.
  in_middle = OSError(f"Error writing local file {path}: No space left on device [source='{'y' * 200}']")
  kept = first_line(in_middle)
  assert kept.startswith("Error writing local file /data/runs/xxx") and " … No space left on device … " in kept
  assert len(kept) < 340 and "\n" not in kept


def test_a_write_that_fails_while_closing_is_reported_in_one_line(tmp_path):
  """A job that ends (or stops on another error) right after a save learns of its failure only
  when closing the managers: that must be the same one-line error, not a traceback."""
  failing, other = checkpoints.manager(tmp_path / "a", 2), checkpoints.manager(tmp_path / "b", 2)
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
  try:
    noise = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)  # Incompressible: 1 MiB written.
    checkpoints.save(failing, 1, {"params": {"w": jax.numpy.asarray(noise)}})
    with pytest.raises(UserError, match=r"checkpoint to .*/a failed .*File too large.*no complete checkpoint"):
      checkpoints.close(failing, other)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)


@pytest.fixture(scope="module")
def four_steps(tiny_corpus, tmp_path_factory):
  """An in-process run of 4 steps with checkpoints at 2 and 4: (config, workdir)."""
  config = small(make_tiny_config("configs/muscall.py:demo", tiny_corpus))
  workdir = tmp_path_factory.mktemp("four_steps")
  train.train(config, workdir)
  return config, workdir


# Orbax's reads of the damaged checkpoint still in flight when it closes its event loop say so as
# unraisable errors (now and then: it depends on timing); jobs drop them (`cli._quiet_closed_loops`).
@pytest.mark.filterwarnings("ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning")
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(four_steps, tmp_path, capsys):
  config, workdir = four_steps
  whole = _final_state(workdir, 4)

  shutil.copytree(workdir, tmp_path / "damaged")
  for data_file in (tmp_path / "damaged/checkpoints/4/state/d").iterdir():
    data_file.write_bytes(b"\0" * 64)  # Truncated and overwritten: what a crashed disk leaves.
  half_written = tmp_path / "damaged/checkpoints/6.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp"
  half_written.mkdir(parents=True)  # What a kill during a save leaves: never taken for a checkpoint.
  (half_written / "_METADATA").write_text('{"tree_metadata": {"par')
  capsys.readouterr()
  train.train(config, tmp_path / "damaged")
  err = capsys.readouterr().err
  assert "warning: the checkpoint of step 4 is damaged" in err
  assert [p.name.split("-")[0] for p in (tmp_path / "damaged/damaged_checkpoints").iterdir()] == ["4"]
  _assert_bit_identical(whole, _final_state(tmp_path / "damaged", 4))  # Redone from step 2.

  for step in (2, 4):  # Every checkpoint damaged: stop, never start over.
    (tmp_path / f"damaged/checkpoints/{step}/state/_METADATA").write_text("{not json")
  with pytest.raises(UserError, match=r"no checkpoint in .* could be restored \(step 4 .*; step 2 .*Start a new"):
    train.train(config, tmp_path / "damaged")


def test_checkpoint_of_another_model_is_refused_by_name(four_steps, tmp_path):
  config, workdir = four_steps
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  config = config.copy_and_resolve_references()
  config.data.crop_seconds = 4.0  # The audio tower's positional embedding grows.
  with pytest.raises(
    ConfigError, match=r"written for another model: params/model/audio/pool/positional_embedding has shape"
  ):
    train.train(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]  # Nothing moved aside.


def test_a_run_resumed_with_another_config_says_what_differs_and_keeps_the_first(tiny_config, tmp_path, capsys):
  (tmp_path / "checkpoints/4/state").mkdir(parents=True)
  (tmp_path / "config.json").write_text(tiny_config.to_json_best_effort(indent=1))
  assert train.report_config_changes(tmp_path, tiny_config) == []
  changed = tiny_config.copy_and_resolve_references()
  changed.optim.lr, changed.train.steps = 1e-4, changed.train.steps + 100
  del changed.data["prefetch"]
  capsys.readouterr()
  assert train.report_config_changes(tmp_path, changed) == [
    f"data.prefetch {tiny_config.data.prefetch!r} -> '(none)'",
    f"optim.lr {tiny_config.optim.lr!r} -> 0.0001",
    f"train.steps {tiny_config.train.steps!r} -> {tiny_config.train.steps + 100!r}",
  ]
  assert "warning: resuming " in capsys.readouterr().err
  first = (tmp_path / "config.json").read_text()
  assert (tmp_path / "config.until_step_4.json").read_text() == first
  (tmp_path / "config.json").write_text(changed.to_json_best_effort(indent=1))  # That re-run stopped at once.
  assert train.report_config_changes(tmp_path, tiny_config)  # Back: step 4 still came from the first config.
  assert (tmp_path / "config.until_step_4.json").read_text() == first


def test_a_run_resumed_over_a_corpus_prepared_again_says_so(tiny_config, tmp_path, capsys):
  info = records.read_info(tiny_config.data.dir)
  counts = {name: split["count"] for name, split in info["splits"].items()}
  assert train.report_corpus_changes(tmp_path, tiny_config, info) == counts  # A new run: nothing to compare.
  (tmp_path / train.CORPUS_FILE).write_text(json.dumps(counts))
  capsys.readouterr()
  train.report_corpus_changes(tmp_path, tiny_config, info)
  assert "warning" not in capsys.readouterr().err
  (tmp_path / train.CORPUS_FILE).write_text(json.dumps({**counts, "train": counts["train"] - 5, "extra": 3}))
  train.report_corpus_changes(tmp_path, tiny_config, info)
  assert f"(records: extra 3 -> 0; train {counts['train'] - 5} -> {counts['train']}): the run goes on" in (
    capsys.readouterr().err
  )


def test_a_checkpoint_of_the_old_layout_is_named_as_such(tmp_path):
  """Before 0.2 the model's parameters sat at the top of the train state's groups."""
  mgr = checkpoints.manager(tmp_path / "checkpoints", None)
  checkpoints.save(mgr, 3, {"params": {"audio": {"w": jax.numpy.ones(2)}}, "step": jax.numpy.zeros((), "int32")})
  checkpoints.wait(mgr)
  current = {"params": {"model": {"audio": {"w": jax.numpy.ones(2)}}}, "step": jax.numpy.zeros((), "int32")}
  with pytest.raises(ConfigError, match=r"written by mclap before 0.2.*resume it with mclap 0.1, or start a new"):
    checkpoints.restore(mgr, 3, current)
  mgr.close()


def test_a_moving_average_setting_unlike_the_checkpoints_is_named(tiny_config, tmp_path):
  """Resuming with `train.ema_decay` switched on or off is refused in one line, as is a decay of 1."""
  mgr = checkpoints.manager(tmp_path / "checkpoints", None)
  plain = {"params": {"model": {"w": jax.numpy.ones(2)}}, "step": jax.numpy.zeros((), "int32")}
  checkpoints.save(mgr, 3, plain)
  checkpoints.wait(mgr)
  with pytest.raises(ConfigError, match=r"written without a moving average .* config.train.ema_decay it was trained"):
    checkpoints.restore(mgr, 3, {**plain, "ema": plain["params"]})
  mgr.close()
  tiny_config.train.ema_decay = 1.0
  with pytest.raises(ConfigError, match=r"config.train.ema_decay=1.0; use 0 \(off\) or a decay in \(0, 1\)"):
    trainer.ema_decay(tiny_config)


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tiny_config, tmp_path, monkeypatch):
  config = small(tiny_config, steps=8)
  config.train.max_nonfinite_in_a_row = 3
  mesh = parallel.make_mesh(config.mesh)
  tx = trainer.make_optimizer(config, 8)
  model_def, state = trainer.init_state(config, mesh, tx)
  step = trainer.make_train_step(config, model_def, tx, mesh)
  rng = np.random.default_rng(0)
  batch = {
    "mel": rng.normal(size=(8, 32, 63)).astype(np.float32),
    "tokens": rng.integers(1, 100, size=(8, 32)).astype(np.int32),
    "token_mask": np.ones((8, 32), bool),
  }
  poisoned = {**batch, "mel": np.where(np.arange(63) == 5, np.nan, batch["mel"]).astype(np.float32)}
  before = jax.device_get(state)
  state, metrics = step(state, parallel.to_global(poisoned, mesh))
  assert bool(metrics["skipped"]) and not np.isfinite([float(metrics["loss"]), float(metrics["grad_norm"])]).all()
  after = jax.device_get(state)
  assert int(after["step"]) == 1
  del before["step"], after["step"]
  _assert_bit_identical(before, after)
  for _ in range(2):  # The first has learning rate 0 (warm-up): the skipped step did not advance it.
    state, metrics = step(state, parallel.to_global(batch, mesh))
    assert not bool(metrics["skipped"])
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state["params"]), after["params"])
  assert all(jax.tree.leaves(moved))

  to_global = parallel.to_global
  calls = []

  def poison_from_step_3(batch, mesh, *args):
    calls.append(1)
    if len(calls) >= 3:
      batch = {**batch, "mel": np.full_like(batch["mel"], np.inf)}
    return to_global(batch, mesh, *args)

  monkeypatch.setattr(parallel, "to_global", poison_from_step_3)
  with pytest.raises(UserError, match=r"training stopped at step 5: 3 steps in a row had a non-finite loss"):
    train.train(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  skipped = [r for r in rows if "skipped/train_records" in r]
  assert [(r["step"], r["skipped/skipped_in_a_row"]) for r in skipped] == [(3, 1), (4, 2), (5, 3)]
  assert all(len(r["skipped/train_records"]) == len(r["skipped/record_ids"]) == 8 for r in skipped)
  assert all(i.startswith("synth-") for r in skipped for i in r["skipped/record_ids"])
  losses = [r for r in rows if "train/loss" in r]
  assert [r["train/skipped_steps"] for r in losses] == [0, 0, 1, 2]  # Step 5 stopped before its log row.


def test_unwritable_or_full_workdir_fails_before_training(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=r"cannot write to the workdir .*file/run .*choose a writable --workdir"):
    checkpoints.check_writable(tmp_path / "file" / "run", needed_bytes=0)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
  checkpoints.check_writable(tmp_path / "run", needed_bytes=2**20)
  with pytest.raises(UserError, match=r"has 10 MiB free; checkpoints need 20 MiB .*free space or choose another"):
    checkpoints.check_writable(tmp_path / "run", needed_bytes=20 * 2**20)
