"""Multi-host training: 2 CPU processes (jax.distributed over Gloo) = 1 process, same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from mclap import checkpoints

pytestmark = pytest.mark.slow

STEPS = 3


def _train_args(corpus, workdir, steps=STEPS):
  overrides = dict(
    **{"data.dir": corpus, "data.mel.n_mels": 32, "data.crop_seconds": 2.0, "data.num_workers": 0},
    **{"data.eval_batch_size": 8, "train.batch_size": 8, "train.steps": steps, "train.log_every": 1},
    **{"train.eval_every": steps, "train.ckpt_every": steps, "optim.warmup_steps": 2},
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


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _results(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [row["train/loss"] for row in rows if "train/loss" in row]
  mgr = checkpoints.manager(workdir / "checkpoints", None)
  state = checkpoints.restore_on_host(mgr, STEPS)
  mgr.close()
  return losses, jax.device_get(state["params"])


def test_two_processes_train_like_one(tiny_corpus, tmp_path):
  single = _finish(_launch(_train_args(tiny_corpus, tmp_path / "one"), devices=4))
  port = _free_port()
  processes = [
    _launch(
      _train_args(tiny_corpus, tmp_path / "two"),
      devices=2,
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
    )
    for i in range(2)
  ]
  first, second = (_finish(p) for p in processes)
  assert f"[train step {STEPS}]" in single and f"[train step {STEPS}]" in first
  assert "[train step" not in second  # Only process 0 logs.
  (one_losses, one_params), (two_losses, two_params) = _results(tmp_path / "one"), _results(tmp_path / "two")
  assert len(one_losses) == STEPS
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), two_params, one_params)


def test_a_stop_signal_to_one_process_stops_both_after_the_same_step(tiny_corpus, tmp_path):
  """SIGTERM reaches one process of two (a preempted host): both finish the same step, write its
  checkpoint together and exit 0."""
  args = _train_args(tiny_corpus, tmp_path, steps=200)  # Never reached: no validation to compile.
  port = _free_port()
  env = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2")
  first, second = (_launch(args, devices=2, JAX_PROCESS_ID=str(i), **env) for i in range(2))
  lines = []
  for line in first.stdout:  # Process 0 logs every step.
    lines.append(line)
    if line.startswith("[train step 1]"):
      break
  second.send_signal(signal.SIGTERM)
  outputs = [("".join(lines) + first.communicate(timeout=600)[0]), second.communicate(timeout=600)[0]]
  assert first.returncode == 0 and second.returncode == 0, outputs
  stops = [next(line for line in out.splitlines() if line.startswith("stopped by")) for out in outputs]
  assert stops[0].startswith("stopped by a stop signal on another process after step ")
  assert stops[1].startswith("stopped by SIGTERM after step ")
  step = int(stops[1].split()[5])
  assert int(stops[0].split()[10]) == step and 1 <= step < 200
  mgr = checkpoints.manager(tmp_path / "checkpoints", None)
  assert mgr.latest_step() == step
  mgr.close()
