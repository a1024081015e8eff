"""TensorBoard scalars written without TensorFlow, read back by TensorFlow's own reader."""

import json
import subprocess
import sys
import time

import numpy as np
from conftest import ROOT

from mclap import train
from mclap.training import tensorboard


def test_crc32c_of_the_standard_check_string():
  assert tensorboard.crc32c(b"123456789") == 0xE3069283  # The CRC-32C catalogue's check value.
  assert tensorboard.crc32c(b"") == 0


def test_metrics_log_rows_are_tensorboard_scalars(tmp_path):
  start = time.time()
  log = train.MetricsLog(tmp_path / "metrics.jsonl")
  log.write(1, {"loss": 2.5, "lr": 1e-4, "skipped_steps": 0, "input_wait_fraction": 0.25})
  log.write(300, {"loss": 0.123456789, "t2a_R@10": 87.5}, prefix="val")
  log.write(301, {"skipped_in_a_row": 1, "train_records": [4, 7], "record_ids": ["a", "b"]}, prefix="skipped")
  log.close()
  result = subprocess.run(
    [sys.executable, str(ROOT / "tests/read_tfevents.py"), str(tmp_path)], capture_output=True, text=True, check=True
  )
  events = [json.loads(line) for line in result.stdout.splitlines()]
  assert events[0] == {"file_version": "brain.Event:2"}
  scalars = {(e["step"], e["tag"]): e["value"] for e in events[1:]}
  expected = {
    (1, "train/loss"): 2.5,
    (1, "train/lr"): 1e-4,
    (1, "train/skipped_steps"): 0.0,
    (1, "train/input_wait_fraction"): 0.25,
    (300, "val/loss"): 0.123457,
    (300, "val/t2a_R@10"): 87.5,
    (301, "skipped/skipped_in_a_row"): 1.0,
  }  # fmt: skip  (metrics.jsonl's rounding; lists are not scalars)
  assert scalars.keys() == expected.keys()
  for key, value in expected.items():
    assert scalars[key] == np.float32(value), key
  assert all(start - 1 <= e["time"] <= time.time() for e in events[1:])
