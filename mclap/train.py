"""Train: `python -m mclap.train --config configs/muscall.py[:arg] --workdir W [--config.a.b=v]`.

Re-running with the same workdir resumes from the last complete checkpoint (state and data
position) and reaches bit-identical parameters. SIGTERM or Ctrl-C saves a checkpoint after the
current step and exits 0; a step with a non-finite loss or gradient is skipped and logged.
Writes `W/metrics.jsonl` and the same scalars as TensorBoard event files in W (`tensorboard
--logdir W`), `W/checkpoints/` (last `train.keep_checkpoints`) and `W/best/` (the checkpoint with
the best validation text→audio R@10, MusCALL's model-selection rule). Validation reports the
objective's own loss and retrieval; evaluators with `evals.<name>.every > 0` run as well.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import flags

from mclap import cli, evaluation, objectives, parallel, paths
from mclap.data import pipeline, records
from mclap.data import tokenizer as tokenizer_lib
from mclap.errors import ConfigError, UserError
from mclap.evaluation import metrics
from mclap.models import weights
from mclap.models.embedder import Embedder
from mclap.training import checkpoints, flops, guards, profile, tensorboard, text_cache, trainer

CORPUS_FILE = "corpus.json"  # Records per split of the corpus a run last started on.


class MetricsLog:
  """Process 0 prints metrics, appends them as JSON lines and writes their numbers as TensorBoard
  scalars (in the directory of the JSON file); other processes stay quiet."""

  def __init__(self, path: pathlib.Path):
    self.path = path if jax.process_index() == 0 else None
    self.events = None

  def write(self, step: int, values: dict, prefix: str = "train") -> None:
    if self.path is None:
      return
    row = {"step": step, **{f"{prefix}/{k}": (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    self.events = self.events or tensorboard.EventWriter(self.path.parent)
    self.events.scalars(step, {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))})
    shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    print(f"[{prefix} step {step}] {shown}", flush=True)

  def close(self) -> None:
    if self.events is not None:
      self.events.close()

  def drop_after(self, step: int) -> None:
    """Forgets the rows of steps after `step`: a resumed run logs them again."""
    if self.path is None or not self.path.exists():
      return
    lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and _row_step(line) <= step]
    records.write_text_atomic(self.path, "".join(kept))


def _row_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError):
    return 1 << 62  # A line cut short by a kill: dropped.


class TextLookup(NamedTuple):
  """A frozen text tower's rows and tables (`text_cache`), or (None, {}): the tower runs."""

  rows: tokenizer_lib.TextRows | None
  tables: dict[str, jax.Array]


def total_steps(config, num_train: int) -> int:
  return config.train.steps or config.train.epochs * max(num_train // config.train.batch_size, 1)


def validation_loss(config, loss_fn, state, mesh, texts: TextLookup) -> float | None:
  """Mean of the objective's loss over one pass of training-style batches of the validation split
  (crops, texts and augmentations drawn with the run's seed: the same every time), at most
  `train.batch_size` examples per batch; None if the split is smaller than one batch per device."""
  val_records = len(records.CorpusReader(config.data.dir, config.data.val_split))
  batch_size = min(config.train.batch_size, val_records // jax.device_count() * jax.device_count())
  if not batch_size:
    return None
  ds = pipeline.train_dataset(
    config,
    split=config.data.val_split,
    epochs=1,
    batch_size=batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    text_rows=texts.rows,
  )
  trim = lambda batch: parallel.trim_token_padding(batch, config.data.token_bucket)  # noqa: E731
  batches = pipeline.iterate(ds, num_workers=0, prefetch=config.data.prefetch)
  losses = [loss_fn(state, parallel.to_global(trim(batch), mesh), texts.tables) for batch in batches]
  return float(np.mean([float(loss) for loss in losses]))


def validate(config, embedder: Embedder, loss_fn, state, mesh, texts: TextLookup) -> dict[str, float]:
  """The objective's validation loss, and retrieval metrics on central crops and first captions."""
  emb = evaluation.EvalContext(config, embedder, state).embeddings(config.data.val_split)
  found = metrics.text_audio_retrieval(emb["audio"], emb["text"])
  loss = validation_loss(config, loss_fn, state, mesh, texts)
  return {
    **({"loss": loss} if loss is not None else {}),
    "t2a_R@10": found["text_to_audio"]["R@10"],
    "a2t_R@10": found["audio_to_text"]["R@10"],
    "t2a_R@1": found["text_to_audio"]["R@1"],
  }


def check_splits(config: ml_collections.ConfigDict, info: dict) -> None:
  """`data.train_split` and `data.val_split` must be splits of the corpus (`info`: its
  dataset_info); checked first, as the evaluators that run with validation take `data.val_split`
  for their own split (a corpus of a few files hashed into train and test named
  `evals.geometry.split`, which the user had not set)."""
  have = sorted(info.get("splits", {}))
  for key in ("train_split", "val_split"):
    if config.data[key] not in have:
      fix = f"set --config.data.{key} to one of them"
      if key == "val_split" and have == [config.data.train_split]:  # Validating on the training data is no fix.
        fix = (
          "prepare it again with rows held out in a validation split (--source folder: name it in a split "
          "column; rows left without one are split 80/10/10 by a hash of the path)"
        )
      raise ConfigError(
        f"config.data.{key} is '{config.data[key]}', not a split of {config.data.dir} (it has: {have}); {fix}"
      )


def periodic_evals(config) -> tuple[ml_collections.ConfigDict, dict[str, int]]:
  """The config the evaluators run during training read, and the period of each that runs: `every`
  N > 0 steps, or -1: with each validation (`train.eval_every`) and on the validation split, as
  the test split is no business of training."""
  eval_config = ml_collections.ConfigDict(config.to_dict())
  every = {}
  for name, settings in eval_config.evals.items():
    period = int(settings.get("every", 0))
    if period < -1:
      raise ConfigError(f"config.evals.{name}.every={period}; use N > 0 steps, -1 (with validation) or 0 (off)")
    if period == -1:
      settings.every = config.train.eval_every
      if "split" in settings:
        settings.split = config.data.val_split
    if period:
      every[name] = settings.every
  return eval_config, every


def check_not_beside_workdirs(workdir: pathlib.Path) -> None:
  """A run goes in a new folder or resumes its own: an existing folder that is not a workdir, but
  holds one or lies in one (`runs` for `runs/demo`, or `runs/demo/checkpoints`), is a slip that
  would start a new run from scratch where the old one's files are. A file (its config.json) is
  refused too."""
  paths.check_not_file(workdir, "--workdir", weights.is_workdir)
  if workdir.is_dir() and not (workdir / weights.CONFIG_FILE).is_file():
    if found := paths.near(workdir, weights.is_workdir):
      which = f"{found[0]} is one: name it" if len(found) == 1 else f"{' and '.join(map(str, found[:3]))} are: name one"
      raise ConfigError(
        f"{workdir} is not a training workdir, but {which} in --workdir to resume it, or a new folder for a new run"
      )


def report_corpus_changes(workdir: pathlib.Path, config: ml_collections.ConfigDict, info: dict) -> dict[str, int]:
  """A run resumed over its corpus (`info`: its dataset_info) prepared again since (files added or
  removed) goes on over the corpus as it is now, and its data order is no longer an uninterrupted
  run's: say so, in one warning. Returns the records per split, which the run keeps in
  `corpus.json`."""
  counts = {name: int(split["count"]) for name, split in info.get("splits", {}).items()}
  try:
    before = json.loads((workdir / CORPUS_FILE).read_text())
  except (OSError, json.JSONDecodeError):  # A new run, or one from before corpus.json.
    return counts
  if changed := [
    f"{name} {before.get(name, 0)} -> {counts.get(name, 0)}"
    for name in sorted(before.keys() | counts.keys())
    if before.get(name, 0) != counts.get(name, 0)
  ]:
    print(
      f"warning: {config.data.dir} changed since {workdir} last ran on it (records: {'; '.join(changed)}): the run "
      "goes on over the corpus as it is now, in another data order than an uninterrupted run's",
      file=sys.stderr,
      flush=True,
    )
  return counts


def _flat(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return flat


def report_config_changes(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> list[str]:
  """A resumed run goes on with the config it is given, which may not be the one it started with
  (more steps, a lower learning rate, or a slip): before the slow part, say what differs, and keep
  the earlier config beside the new one (`config.until_step_N.json`). Returns the differences."""
  saved, steps = workdir / weights.CONFIG_FILE, weights.checkpoint_steps(workdir / "checkpoints")
  if not (saved.is_file() and steps):
    return []
  before, after = _flat(json.loads(saved.read_text())), _flat(json.loads(config.to_json_best_effort()))
  changed = [
    f"{key} {before.get(key, '(none)')!r} -> {after.get(key, '(none)')!r}"
    for key in sorted(before.keys() | after.keys())
    if before.get(key) != after.get(key)
  ]
  if changed:
    kept = workdir / f"config.until_step_{steps[-1]}.json"
    print(
      f"warning: resuming {workdir} with a config other than its run's ({saved.name} until step {steps[-1]}, "
      f"kept as {kept.name}): {'; '.join(changed)}",
      file=sys.stderr,
      flush=True,
    )
    if jax.process_index() == 0 and not kept.exists():  # A re-run stopped before its next checkpoint trained nothing.
      shutil.copyfile(saved, kept)
  return changed


def train(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path) -> dict:
  """Trains to `total_steps`, or until a stop signal (then saves and returns with `stopped` set);
  without a config, resumes the workdir's run with its own."""
  started = time.perf_counter()
  workdir = pathlib.Path(workdir)
  check_not_beside_workdirs(workdir)
  if config is None:  # A resume, with the config the run was started with.
    if not (workdir / weights.CONFIG_FILE).is_file():
      raise UserError(f"{workdir} holds no run to resume: start one with --config FILE (e.g. configs/muscall.py:demo)")
    config = weights.workdir_config(workdir)
  report_config_changes(workdir, config)
  info = records.read_info(config.data.dir)  # Read once for the checks below.
  corpus = report_corpus_changes(workdir, config, info)
  checkpoints.check_writable(workdir, needed_bytes=0)  # Fail before the slow part.

  # ---------------------------------------------------------------- Mesh.
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_sizes(
    mesh, **{"train.batch_size": config.train.batch_size, "data.eval_batch_size": config.data.eval_batch_size}
  )

  # The splits training reads, then the evaluators that run during training: their settings are
  # checked before anything slow.
  check_splits(config, info)
  if bad := [k for k in ("profile_steps", "profile_after") if config.train.get(k, 0) < 0]:
    raise ConfigError(f"config.train.{bad[0]}={config.train[bad[0]]}: give a number of steps, 0 or more")
  eval_config, every = periodic_evals(config)
  periodic = evaluation.select(eval_config, list(every))

  # ---------------------------------------------------------------- Input.
  train_records = records.CorpusReader(config.data.dir, config.data.train_split)  # Opens shards when read.
  steps = total_steps(config, len(train_records))
  # A frozen text tower's features are looked up (`text_cache`): each text is its row.
  encoders = text_cache.encoders(config, objectives.build(config))
  texts = pipeline.corpus_texts(config, (config.data.train_split, config.data.val_split)) if encoders else []
  text_rows = tokenizer_lib.TextRows(texts) if encoders else None
  train_ds = pipeline.train_dataset(
    config, process_index=jax.process_index(), process_count=jax.process_count(), text_rows=text_rows
  )
  data_iter = pipeline.iterate(train_ds, config.data.num_workers, config.data.prefetch)

  # ---------------------------------------------------------------- Model, optimizer, step.
  tx = trainer.make_optimizer(config, steps)
  schedule = trainer.learning_rate_schedule(config, steps)
  model_def, state = trainer.init_state(config, mesh, tx)
  lookup = TextLookup(text_rows, text_cache.tables(model_def.merge(state), encoders, texts, config, mesh, workdir))
  train_step = trainer.make_train_step(config, model_def, tx, mesh)
  embedder = Embedder(lambda s: model_def.merge(s).model, mesh, config.data.eval_batch_size, config.data.token_bucket)
  validation_loss_fn = trainer.make_validation_loss(model_def, mesh)
  checkpoints.check_writable(workdir, needed_bytes=2 * checkpoints.saved_bytes(state))

  # ---------------------------------------------------------------- Resume or start.
  log = MetricsLog(workdir / "metrics.jsonl")
  ckpts = checkpoints.manager(workdir / "checkpoints", config.train.keep_checkpoints)
  best_ckpt = checkpoints.manager(workdir / "best", 1)
  best_file = workdir / "best.json"
  best = json.loads(best_file.read_text()) if best_file.exists() else {"step": -1, "t2a_R@10": -1.0}
  state, start = checkpoints.restore_latest(ckpts, state, data_iter)
  if start:
    print(f"resumed from {workdir / 'checkpoints'} at step {start}", flush=True)
  log.drop_after(start)
  if jax.process_index() == 0:
    (workdir / weights.CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))
    (workdir / CORPUS_FILE).write_text(json.dumps(corpus))

  # ---------------------------------------------------------------- Loop.
  def report_skipped(step: int, values: dict) -> None:
    ids = [train_records[i]["id"] for i in values["train_records"]]
    log.write(step, {**values, "record_ids": ids}, prefix="skipped")

  nonfinite = guards.NonFiniteSteps(config.train.max_nonfinite_in_a_row, report_skipped)
  if start < steps and jax.process_index() == 0:  # The first step compiles: a minute or more on a large model.
    print(f"training steps {start + 1}-{steps} into {workdir}; compiling the train step first", flush=True)
  window_start, window_steps, input_wait, step, stopped = time.perf_counter(), 0, 0.0, start, None
  step_flops, window_flops = flops.StepCounter(train_step), 0.0
  startup = {}
  # Past the compiling first step and warm-up: the steps as they run for the rest of the job.
  trace = profile.StepTrace(
    workdir, start + 1 + config.train.get("profile_after", 0), config.train.get("profile_steps", 0)
  )
  with guards.StopSignals() as stop_signals:
    try:
      for step in range(start + 1, steps + 1):
        trace.before(step)
        waiting = time.perf_counter()
        batch = parallel.trim_token_padding(next(data_iter), config.data.token_bucket)
        input_wait += time.perf_counter() - waiting
        args = (state, parallel.to_global(batch, mesh), lookup.tables)
        work = step_flops(*args)
        window_flops = None if work is None or window_flops is None else window_flops + work
        state, step_metrics = train_step(*args)
        nonfinite.observe(step, step_metrics.pop("skipped"), batch["index"])
        window_steps += 1
        window_start += trace.after(step, state)  # Writing the trace, left out of the rates.
        if step == start + 1:  # Leave compilation out of the rates; report it once.
          jax.block_until_ready(state)
          window_start, window_steps, input_wait, window_flops = time.perf_counter(), 0, 0.0, 0.0
          startup = {"startup_s": window_start - started}
        if step % config.train.log_every == 0 or step == steps:
          nonfinite.flush()
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          values.update(lr=float(schedule(step - 1)), skipped_steps=nonfinite.total, **startup)
          if window_steps:  # None when only the compiling first step was logged: no rate yet.
            window = max(time.perf_counter() - window_start, 1e-9)
            rate = window_steps / window
            values.update(
              steps_per_s=rate,
              examples_per_s=rate * config.train.batch_size,
              # Each step's time split into waiting for its batch and the rest (the step itself and
              # logging; validation and checkpoint saves are left out): a wait fraction near 1 means
              # the run is input-bound.
              input_wait_s=input_wait / window_steps,
              step_s=(window - input_wait) / window_steps,
              input_wait_fraction=min(input_wait / window, 1.0),
              eta_min=(steps - step) / rate / 60,
            )
            if window_flops is not None:  # Matrix products and convolutions (`flops`): the numerator of MFU.
              values["tflop_per_s_per_device"] = window_flops / window / jax.device_count() / 1e12
          startup = {}
          log.write(step, values)
          window_start, window_steps, input_wait, window_flops = time.perf_counter(), 0, 0.0, 0.0
        if step % config.train.eval_every == 0 or step == steps:
          began = time.perf_counter()
          found = validate(config, embedder, validation_loss_fn, trainer.evaluated_state(state), mesh, lookup)
          log.write(step, {**found, "seconds": time.perf_counter() - began}, prefix="val")
          if found["t2a_R@10"] > best["t2a_R@10"]:
            best = {"step": step, "t2a_R@10": found["t2a_R@10"]}
            if step in best_ckpt.all_steps():  # Saved by a run killed before it wrote best.json.
              best_ckpt.delete(step)
            checkpoints.save(best_ckpt, step, state, spec=model_def.spec)
            checkpoints.wait(best_ckpt)
            if jax.process_index() == 0:
              records.write_json_atomic(best_file, best)
          window_start += time.perf_counter() - began  # Reported as val/seconds, not in the step rates.
        if due := {n: m for n, m in periodic.items() if step % every[n] == 0 or step == steps}:
          began = time.perf_counter()
          context = evaluation.EvalContext(eval_config, embedder, trainer.evaluated_state(state))
          results = evaluation.run(context, due)
          log.write(step, {**evaluation.scalars(results), "seconds": time.perf_counter() - began}, prefix="eval")
          window_start += time.perf_counter() - began
        stop_requested = stop_signals.requested()
        if step % config.train.ckpt_every == 0 or step == steps or stop_requested:
          began = time.perf_counter()
          # Copies to host, then writes in the background.
          checkpoints.save(ckpts, step, state, data_iter, spec=model_def.spec)
          window_start += time.perf_counter() - began
        checkpoints.check_writes(ckpts)
        if stop_requested:
          stopped = stop_signals.received or "a stop signal on another process"
          break
      nonfinite.flush()
      checkpoints.wait(ckpts)
    finally:
      trace.stop(step)
      data_iter.close()
      log.close()
      checkpoints.close(ckpts, best_ckpt)
  if stopped:
    print(
      f"stopped by {stopped} after step {step} of {steps}; its checkpoint is in {workdir / 'checkpoints'}. "
      "Run the same command to resume.",
      flush=True,
    )
  elif start >= steps:
    print(
      f"nothing to train: {workdir} is at step {start} of train.steps={steps}. Pass --config.train.steps=N (more "
      f"than {start}) to train on, or evaluate it: python -m mclap.eval --workdir {workdir} --best",
      flush=True,
    )
  return {"step": int(state["step"]), "best": best, "stopped": stopped}


def main(argv):
  del argv
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":  # Flags are defined here so that train() can be imported beside other jobs.
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.", required=True)
  cli.run(main)
