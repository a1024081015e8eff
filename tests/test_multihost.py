"""Multi-host training: 2 CPU processes (jax.distributed over Gloo) = 1 process, same global batch,
through a stop signal to one process and a resume."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, USES_TRAINED_DEMO, free_port

from mclap.models import weights
from mclap.training import checkpoints

pytestmark = [pytest.mark.slow, USES_TRAINED_DEMO]

STEPS = 4


def _train_args(corpus, workdir):
  """`python -m mclap.train` with the settings of the shared `trained_demo` run (conftest)."""
  overrides = dict(
    **{"data.dir": corpus, "data.mel.n_mels": 32, "data.crop_seconds": 2.0, "data.num_workers": 0},
    **{"data.eval_batch_size": 8, "train.batch_size": 8, "train.steps": STEPS, "train.log_every": 1},
    **{"train.eval_every": STEPS, "train.ckpt_every": 2, "optim.warmup_steps": 2},
    **{"optim.eps": 1.0},  # Compare the steps, not Adam-amplified rounding (see test_trainer).
  )
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  return [sys.executable, "-m", "mclap.train", "--config", "configs/muscall.py:demo", *flags, "--workdir", str(workdir)]


def _launch(args, devices, **env):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **env}
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process):
  out, _ = process.communicate(timeout=600)
  assert process.returncode == 0, out
  return out


def _results(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [row["train/loss"] for row in rows if "train/loss" in row]
  state = weights.saved_state(workdir / "checkpoints", STEPS)
  return losses, jax.device_get(state["params"])


def test_two_processes_train_like_one_through_a_stop_and_resume(tiny_corpus, trained_demo, tmp_path):
  """2 processes = 1 process (the shared in-process run on 8 devices), also when SIGTERM reaches
  one of them (a preempted host): both stop after the same step with one checkpoint, and the
  re-run resumes to the same result."""
  cache = dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  def two_processes():
    env = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}", JAX_NUM_PROCESSES="2", **cache)
    args = _train_args(tiny_corpus, tmp_path / "two")
    return [_launch(args, devices=2, JAX_PROCESS_ID=str(i), **env) for i in range(2)]

  first, second = two_processes()
  seen = []
  for line in first.stdout:  # Process 0 logs every step.
    seen.append(line)
    if line.startswith("[train step 1]"):
      break
  second.send_signal(signal.SIGTERM)
  outputs = ["".join(seen) + _finish(first), _finish(second)]
  stops = [next(line for line in out.splitlines() if line.startswith("stopped by")) for out in outputs]
  assert stops[0].startswith("stopped by a stop signal on another process after step ")
  assert stops[1].startswith("stopped by SIGTERM after step ")
  stopped_at = int(stops[1].split()[5])
  assert int(stops[0].split()[10]) == stopped_at and 1 <= stopped_at <= STEPS
  mgr = checkpoints.manager(tmp_path / "two/checkpoints", None)
  assert mgr.latest_step() == stopped_at
  mgr.close()

  first, second = (_finish(p) for p in two_processes())
  assert f"resumed from {tmp_path / 'two/checkpoints'} at step {stopped_at}" in first
  assert f"[train step {STEPS}]" in first and "[train step" not in second  # Only process 0 logs.
  (one_losses, one_params), (two_losses, two_params) = _results(trained_demo[1]), _results(tmp_path / "two")
  assert len(one_losses) == STEPS
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), two_params, one_params)
