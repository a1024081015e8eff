"""Benchmarks, one JSON line per measurement: `make bench` or `python tools/bench.py`.

input: Grain training pipeline throughput (crops/s, batches/s) in the main process and with the
config's worker processes, for each config, on a synthetic corpus rendered with that config's
mel settings (cached under build/bench/).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

from mclap import cli  # noqa: E402
from mclap.data import pipeline, synthetic, writer  # noqa: E402

_CONFIGS = flags.DEFINE_list("configs", ["configs/muscall.py:demo", "configs/muscall.py"], "Configs to benchmark.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per measurement (after 2 warm-up batches).")
_CACHE = flags.DEFINE_string("cache", str(ROOT / "build/bench"), "Where benchmark corpora are kept.")


def machine() -> dict:
  cpu = platform.processor()
  if pathlib.Path("/proc/cpuinfo").is_file():
    names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  versions = {p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "grain", "numpy", "librosa")}
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def bench_corpus(config) -> pathlib.Path:
  """A synthetic corpus with the config's mel settings and clips 1.5x the crop length."""
  mel = config.data.mel.to_dict()
  seconds = 1.5 * config.data.crop_seconds
  clips = max(2 * config.train.batch_size, 128)
  out = pathlib.Path(_CACHE.value) / f"mels{mel['n_mels']}-hop{mel['hop_length']}-{seconds:g}s-{clips}"
  writer.write_corpus(
    out,
    synthetic.plan_clips(clips, 0, seconds),
    synthetic.make_record_fn(mel),
    mel_config=mel,
    source="synthetic",
    show_progress=False,
  )
  return out


def time_batches(next_batch, count: int) -> float:
  for _ in range(2):
    next_batch()
  start = time.perf_counter()
  for _ in range(count):
    next_batch()
  return time.perf_counter() - start


def bench_input(spec: str) -> list[dict]:
  config = cli.load_config(str(ROOT / spec))
  config.data.dir = str(bench_corpus(config))
  ds = pipeline.train_dataset(config)
  rows = []
  for workers in sorted({0, config.data.num_workers}):
    it = pipeline.iterate(ds, workers)
    seconds = time_batches(lambda it=it: next(it), _BATCHES.value)
    it.close()
    batches_per_s = _BATCHES.value / seconds
    rows.append(
      {
        "bench": "input_pipeline",
        "config": spec,
        "batch_size": config.train.batch_size,
        "crop_seconds": config.data.crop_seconds,
        "n_mels": config.data.mel.n_mels,
        "workers": workers,
        "batches_per_s": round(batches_per_s, 2),
        "crops_per_s": round(batches_per_s * config.train.batch_size, 1),
      }
    )
  return rows


def main(argv):
  del argv
  env = machine()
  for spec in _CONFIGS.value:
    for row in bench_input(spec):
      print(json.dumps({**row, "machine": env}), flush=True)


if __name__ == "__main__":
  app.run(main)
