"""A trace of a few train steps of the real loop (`train.profile_steps`), to see where a step's time
goes on the device: TensorBoard's profile tab (`tensorboard --logdir runs/`, with
tensorboard-plugin-profile) or ui.perfetto.dev read it."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax


class StepTrace:
  """Traces steps `first` to `first + count - 1` on process 0 into `workdir/plugins/profile/<time>/`,
  where TensorBoard looks for profiles of the run whose events are in `workdir`; a Perfetto trace
  (`perfetto_trace.json.gz`) is written beside it. `count` 0: nothing is traced."""

  def __init__(self, workdir: pathlib.Path, first: int, count: int):
    self.workdir, self.first, self.last = workdir, first, first + count - 1
    self.wanted = count > 0 and jax.process_index() == 0
    self.tracing = False

  def before(self, step: int) -> None:
    if self.wanted and step == self.first:
      jax.profiler.start_trace(str(self.workdir), create_perfetto_trace=True)
      self.tracing = True

  def after(self, step: int, state: Any) -> float:
    """Ends the trace after its last step, once the device has run it; returns the seconds that
    took (writing the trace), to leave out of the step rates."""
    if not (self.tracing and step == self.last):
      return 0.0
    jax.block_until_ready(state)  # The step's own time stays in the rates.
    began = time.perf_counter()
    self.stop(step)
    return time.perf_counter() - began

  def stop(self, step: int) -> None:
    """Ends the trace after `step`, if it runs (the run may stop inside it), and says where it is."""
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
      newest = max((self.workdir / "plugins/profile").iterdir(), key=lambda p: p.stat().st_mtime)
      print(
        f"traced steps {self.first}-{step} into {newest} (TensorBoard's profile tab, or ui.perfetto.dev)", flush=True
      )
