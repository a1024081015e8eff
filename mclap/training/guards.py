"""What ends a training run early, and how: stop signals and runs of non-finite steps.

Both are agreed on by every process of a multi-host job (a collective over a flag), so that all
of them stop after the same step and write the same checkpoint.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from mclap.errors import UserError


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class StopSignals:
  """Within `with`, SIGTERM (preemption, `kill`, Slurm's notice) and SIGINT (Ctrl-C) only record
  a request that the loop honours between steps: finish the step, save, exit 0. A second SIGINT
  interrupts at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():  # Python only allows handlers there.
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name

  def requested(self) -> bool:
    """Whether any process has received a stop signal (call on every process, after each step)."""
    return _any_process(self.received is not None)


class NonFiniteSteps:
  """Counts the steps the train step skipped for a non-finite loss or gradient and stops the run
  after `limit` in a row.

  A step's flag is read when the next step has been dispatched, so the check costs no pipeline
  stall; `flush` reads the last one.
  """

  def __init__(self, limit: int, report):
    self.limit, self.report = limit, report
    self.total = self.in_a_row = 0
    self._pending = None

  def observe(self, step: int, skipped: jax.Array, record_indices: np.ndarray) -> None:
    self.flush()
    self._pending = (step, skipped, record_indices)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, skipped, record_indices = self._pending
    self._pending = None
    if not bool(jax.device_get(skipped)):
      self.in_a_row = 0
      return
    self.total += 1
    self.in_a_row += 1
    if jax.process_count() > 1:
      record_indices = multihost_utils.process_allgather(record_indices, tiled=True)
    records = sorted(int(i) for i in np.asarray(record_indices).reshape(-1))
    self.report(step, {"skipped_in_a_row": self.in_a_row, "skipped_total": self.total, "train_records": records})
    if self.in_a_row >= self.limit:
      raise UserError(
        f"training stopped at step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient "
        "(each was skipped; the last checkpoint holds the state before them). Lower optim.lr, set "
        "optim.clip_norm, or train in float32 (train.dtype), then resume; train.max_nonfinite_in_a_row "
        "sets the limit"
      )
