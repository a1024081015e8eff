"""Benchmarks, one JSON line per measurement: `make bench` or `python benchmarks/bench.py`.

input: Grain training pipeline throughput (crops/s, batches/s) in the main process and with the
  config's worker processes, and in the main process with every augmentation on, on a synthetic
  corpus rendered with that config's mel settings (cached under build/bench/).
prepare: `prepare --source folder` throughput in tracks/min for 30 s 44.1 kHz stereo tracks
  (MP3 and FLAC) with every core, and the per-track time of each stage (decode, resample, mel).
train_step, embed: examples/s of the jitted train step (forward, loss, backward, AdamW update)
  and of inference embedding (audio + text), and model FLOPs per example (the matrix products and
  convolutions of its jaxpr, `mclap/training/flops.py`: the same on every backend; XLA's cost analysis of
  the compiled computation beside it), at `--model_batch` on all local devices, with texts
  padded to `max_tokens` and trimmed by `data.token_bucket` (`--token_buckets`). MFU is the
  achieved FLOP/s over the peak measured in the same run (the faster of a large matmul and a
  large convolution in the same dtype); memory is XLA's memory analysis of the compiled step
  (arguments + outputs + temporaries, per device) and, where the backend reports it, the peak.
memory: per-device memory from XLA's memory analysis of compiled steps (nothing runs): the InfoNCE
  and SigLIP loss steps (loss + gradient w.r.t. 512-d embeddings) for global batches 64 -> 4096 on
  all devices (run with 8 simulated CPU devices: `make bench`), and the whole train step of each
  model config at `--model_batch` on one device for every remat policy and for 1, 2, 4 sub-batches.
search: `mclap.search` on an index of `--index_size` (100,000) random 512-d embeddings with the
  muscall.py model (untrained: speed does not depend on the weights): loading the index and the
  bundle, the first query (compiles the text tower), then per query, warm, the text embedding and
  the ranking (cosine against every row, top 10), median and worst of 20 queries; and `mclap.embed`
  of the prepare benchmark's tracks with the same bundle (files/min, after loading and compiling).
towers: where the model's time goes: each tower alone, forward (inference) and forward +
  backward, at `--model_batch` with random inputs (texts of `max_tokens` and of 32 tokens).
audio_towers: inference throughput (clips/s, seconds of audio per second) of the config's audio
  tower beside LAION-CLAP's HTS-AT tiny and base on their 10 s crops, random weights and mels.
versus: mclap's train step beside the PyTorch MusCALL of benchmarks/torch_muscall.py at equal work
  (same batch of log-mels and `max_tokens`-token texts, same sizes and vocabulary), timed in
  alternating rounds in one process so that both see the same machine; needs torch. On a GPU the
  PyTorch step runs as the original ships (fp16 AMP) and in bf16 AMP.
loop: the real job, `python -m mclap.train` on the input corpus with `data.num_workers` =
  `--workers`, for `--loop_steps` steps: examples/s, the input-wait share and TFLOP/s per device
  from its metrics.jsonl (the first step, compilation, is left out by the job), its start-up from a cold
  compilation cache, then the same job again in a new workdir with that cache warm. With
  `--profile_dir`, the warm job traces a few steps (train.profile_steps): the windows logged across
  them are left out of its rate, and the trace is copied there.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import soxr  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

import mclap  # noqa: E402
from mclap import cli, embed, parallel, search  # noqa: E402
from mclap.data import mel as mel_lib  # noqa: E402
from mclap.data import pipeline, records  # noqa: E402
from mclap.data import tokenizer as tokenizer_lib  # noqa: E402
from mclap.models import build_model, spec_from_config  # noqa: E402
from mclap.models import spec as spec_lib  # noqa: E402
from mclap.models.audio import ModifiedResNet  # noqa: E402
from mclap.models.embedder import Embedder  # noqa: E402
from mclap.models.htsat import HTSAT  # noqa: E402
from mclap.prepare import decode, synthetic, writer  # noqa: E402
from mclap.prepare.sources import folder  # noqa: E402
from mclap.serve import bundle  # noqa: E402
from mclap.serve import index as index_lib  # noqa: E402
from mclap.training import flops, memory, trainer  # noqa: E402

_BENCHMARKS = flags.DEFINE_list(
  "benchmarks", ["input", "prepare", "model", "towers", "search"], "Which benchmarks to run."
)
_CONFIGS = flags.DEFINE_list("configs", ["configs/muscall.py:demo", "configs/muscall.py"], "Configs to benchmark.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per measurement (after 2 warm-up batches).")
_CACHE = flags.DEFINE_string("cache", str(ROOT / "build/bench"), "Where benchmark corpora are kept.")
_MODEL_CONFIGS = flags.DEFINE_list("model_configs", ["configs/muscall.py"], "Configs for train_step/embed.")
_MODEL_BATCH = flags.DEFINE_integer("model_batch", 16, "Global batch for train_step/embed.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype for train_step/embed (bfloat16 on accelerators).")
_PREPARE_TRACKS = flags.DEFINE_integer("prepare_tracks", 32, "Tracks for the prepare benchmark (half MP3, half FLAC).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model measurement (after 2 warm-up steps).")
_INDEX_SIZE = flags.DEFINE_integer("index_size", 100_000, "Rows of the search benchmark's index.")
_TOKEN_BUCKETS = flags.DEFINE_list("token_buckets", ["0", "16"], "data.token_bucket values for train_step/embed.")
_SUB_BATCHES = flags.DEFINE_integer("sub_batches", 1, "train.sub_batches for train_step (feature caching).")
_WORKERS = flags.DEFINE_list("workers", [], "Input worker counts for input/loop (default: 0 and the config's).")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 300, "Steps of the loop benchmark's training run.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of the versus benchmark.")
_SET = flags.DEFINE_multi_string("set", [], "key=value set in every benchmarked config (data.tokenizer_dir=DIR).")
_PROFILE_DIR = flags.DEFINE_string(
  "profile_dir",
  "",
  "loop: trace --profile_steps steps of the warm start (train.profile_steps) and copy the trace here.",
)
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps the loop's trace holds (with --profile_dir).")


def load_config(spec: str):
  """The config of `spec` with the `--set` values (checked like a job's --config.key=value)."""
  config = cli.load_config(str(ROOT / spec))
  for item in _SET.value:
    key, _, value = item.partition("=")
    cli.check_override(config, key)
    *parents, leaf = key.split(".")
    section = functools.reduce(getattr, parents, config)
    current = getattr(section, leaf)
    setattr(section, leaf, type(current)(value) if isinstance(current, (int, float, str)) else value)
  return config


def machine() -> dict:
  cpu = platform.processor()
  if pathlib.Path("/proc/cpuinfo").is_file():
    names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  versions = {p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "grain", "numpy")}
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def bench_corpus(config) -> pathlib.Path:
  """A synthetic corpus with the config's mel settings and clips 1.5x the crop length (for a
  features config, `features_corpus`)."""
  if "features" in config.data:
    return features_corpus(config)
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


def features_record(item: tuple[str, int], corpus: str, dim: int, frames: int) -> dict:
  """Record `item` (split, index) of a synthetic mel corpus with random features in place of its
  mel: a features corpus with the synthetic captions."""
  split, index = item
  record = records.CorpusReader(corpus, split)[index]
  rng = np.random.default_rng(index)
  return {**{k: v for k, v in record.items() if k != "mel"}, "features": rng.normal(size=(dim, frames))}


def features_corpus(config) -> pathlib.Path:
  """A corpus of random features of the config's dimension, tracks 1.5x the crop length, with the
  captions of the synthetic corpus."""
  features = dict(config.data.features)
  frames = int(1.5 * spec_lib.input_shape(config)[1]) + 1
  mel_config = load_config("configs/muscall.py:demo")
  mel_config.data.crop_seconds = 1.0
  mel_config.train.batch_size = config.train.batch_size
  mels = bench_corpus(mel_config)
  splits = {s: [(s, i) for i in range(v["count"])] for s, v in records.read_info(mels)["splits"].items()}
  out = pathlib.Path(_CACHE.value) / f"features{features['dim']}-{frames}frames-{len(splits['train'])}"
  work = functools.partial(features_record, corpus=str(mels), dim=features["dim"], frames=frames)
  writer.write_corpus(out, splits, work, features=features, source="bench", num_workers=0, show_progress=False)
  return out


def time_batches(next_batch, count: int) -> float:
  for _ in range(2):
    next_batch()
  start = time.perf_counter()
  for _ in range(count):
    next_batch()
  return time.perf_counter() - start


# Every augmentation on, for the cost of augmenting in the input pipeline.
_ALL_AUGMENTATIONS = dict(gain_prob=1.0, noise_prob=1.0, pitch_prob=1.0, time_masks=2, freq_masks=2, mixup_prob=1.0)


def bench_input(spec: str) -> list[dict]:
  config = load_config(spec)
  config.data.dir = str(bench_corpus(config))
  rows = []
  runs = [(w, False) for w in _worker_counts(config)] + [(0, True)]
  for workers, augmented in runs:
    if augmented:
      config.data.augment.update(_ALL_AUGMENTATIONS)
    it = pipeline.iterate(pipeline.train_dataset(config), workers, config.data.prefetch)
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
        "augmented": augmented,
        "batches_per_s": round(batches_per_s, 2),
        "crops_per_s": round(batches_per_s * config.train.batch_size, 1),
      }
    )
  return rows


def _worker_counts(config) -> list[int]:
  return sorted(map(int, _WORKERS.value)) if _WORKERS.value else sorted({0, config.data.num_workers})


def prepare_tracks() -> pathlib.Path:
  """30 s 44.1 kHz stereo synthetic music as MP3 and FLAC with a metadata.csv (cached)."""
  root = pathlib.Path(_CACHE.value) / f"prepare-src-{_PREPARE_TRACKS.value}"
  if (root / "metadata.csv").is_file():
    return root
  root.mkdir(parents=True, exist_ok=True)
  rows = ["path,caption"]
  plan = synthetic.plan_clips(_PREPARE_TRACKS.value, 0, 30.0)
  for spec in (spec for split in plan.values() for spec in split):
    rng = np.random.default_rng([spec.seed, spec.index])
    wave = synthetic.render(synthetic.draw_attributes(spec, rng), 30.0, 44100, rng)
    name = f"{spec.id}.{'mp3' if spec.index % 2 else 'flac'}"
    soundfile.write(root / name, np.stack([wave, wave], axis=1), 44100)
    rows.append(f"{name},a track")
  (root / "metadata.csv").write_text("\n".join(rows) + "\n")
  return root


def bench_prepare() -> list[dict]:
  root = prepare_tracks()
  mel_config = mel_lib.default_mel_config().to_dict()
  files = sorted(p for p in root.iterdir() if p.suffix in (".mp3", ".flac"))
  stages = {"decode": 0.0, "resample": 0.0, "mel": 0.0}
  for path in files:
    start = time.perf_counter()
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    wave = data.mean(axis=1)
    decoded = time.perf_counter()
    wave = soxr.resample(wave, rate, 16000, quality="HQ")
    resampled = time.perf_counter()
    mel_lib.log_mel(wave, mel_config)
    stages["decode"] += decoded - start
    stages["resample"] += resampled - decoded
    stages["mel"] += time.perf_counter() - resampled
  with tempfile.TemporaryDirectory() as out:
    settings = decode.DecodeSettings(tuple(sorted(mel_config.items())), None, 1.0, 16000)
    start = time.perf_counter()
    writer.write_corpus(
      out,
      folder.list_items(root, seed=0).splits,
      decode.work_function(decode.decode_record, settings, None),
      mel_config=mel_config,
      source="folder",
      show_progress=False,
    )
    seconds = time.perf_counter() - start
  per_track = {f"{k}_ms_per_track": round(1000 * v / len(files), 1) for k, v in stages.items()}
  return [
    {
      "bench": "prepare",
      "tracks": len(files),
      "track_seconds": 30.0,
      "input": "44.1 kHz stereo MP3+FLAC",
      "workers": os.cpu_count(),
      "tracks_per_min": round(60 * len(files) / seconds, 1),
      **per_track,
    }
  ]


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis.get("flops", float("nan")))


def memory_mb(compiled) -> float:
  """Per-device bytes XLA plans for the computation: arguments, outputs and temporaries (MB)."""
  return round(memory.compiled_bytes(compiled)["total"] / 2**20, 1)


def measure_peak(dtype: str) -> dict:
  """Achievable FLOP/s of this device: a 4096^2 matmul and a 3x3, 256-channel convolution, the
  better of the two (the denominator of MFU)."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (4096, 4096), dtype)
  x = jax.random.normal(key, (32, 64, 64, 256), dtype)
  w = jax.random.normal(key, (3, 3, 256, 256), dtype)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
  rates = {}
  for name, fn, args in (("matmul", lambda a: a @ a, (a,)), ("conv", conv, (x, w))):
    jitted = jax.jit(fn)
    work = flops.count(jitted, *args)
    seconds = time_batches(lambda jitted=jitted, args=args: jax.block_until_ready(jitted(*args)), 5) / 5
    rates[f"peak_{name}_gflop_per_s"] = round(work / seconds / 1e9, 1)
  return rates


def _train_step(spec: str, sub_batches: int = 1):
  """The config of `spec` at `--model_batch` and `--dtype` on the benchmark corpus, on all local
  devices: (config, mesh, model_def, state, jitted train step)."""
  config = load_config(spec)
  config.train.batch_size = _MODEL_BATCH.value  # Before the corpus, which holds two batches.
  config.data.dir = str(bench_corpus(config))
  config.train.dtype = _DTYPE.value
  config.train.sub_batches = sub_batches
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  tx = trainer.make_optimizer(config, 1000)
  model_def, state = trainer.init_state(config, mesh, tx)
  return config, mesh, model_def, state, trainer.make_train_step(config, model_def, tx, mesh)


def bench_model(spec: str, peak: dict) -> list[dict]:
  config, mesh, model_def, state, step = _train_step(spec, _SUB_BATCHES.value)
  embed = Embedder(lambda s: model_def.merge(s).model, mesh, config.train.batch_size).embed_batch
  best_peak = max(peak.values())
  rows = []
  for bucket in map(int, _TOKEN_BUCKETS.value):
    batch = parallel.trim_token_padding(pipeline.train_dataset(config)[0], bucket)
    batch = parallel.to_global(batch, mesh)
    common = {
      "config": spec,
      "batch_size": config.train.batch_size,
      "dtype": config.train.dtype,
      "crop_seconds": config.data.crop_seconds,
      "input_rows": spec_lib.input_shape(config)[0],
      "token_bucket": bucket,
      "sub_batches": config.train.sub_batches,
      "tokens": int(batch["tokens"].shape[-1]),
      "devices": jax.device_count(),
    }
    for name, fn in (("train_step", step), ("embed", embed)):
      compiled = fn.lower(state, batch).compile()
      holder = {"state": state}

      def run(fn=fn, name=name, holder=holder, batch=batch):
        out = fn(holder["state"], batch)
        if name == "train_step":
          holder["state"] = out[0]  # The step donates its input state.
        jax.block_until_ready(out)

      seconds = time_batches(run, _STEPS.value)
      state = holder["state"]
      per_s = _STEPS.value * config.train.batch_size / seconds
      per_example = flops.count(fn, state, batch) / config.train.batch_size
      stats = jax.local_devices()[0].memory_stats() or {}
      rows.append(
        {
          "bench": name,
          **common,
          "examples_per_s": round(per_s, 2),
          "gflops_per_example": round(per_example / 1e9, 3),
          "xla_gflops_per_example": round(xla_flops(compiled) / config.train.batch_size / 1e9, 3),
          "gflop_per_s": round(per_s * per_example / 1e9, 1),
          "mfu": round(per_s * per_example / 1e9 / best_peak, 3),
          "xla_memory_mb": memory_mb(compiled),
          **({"peak_memory_mb": round(stats["peak_bytes_in_use"] / 2**20, 1)} if "peak_bytes_in_use" in stats else {}),
          **peak,
        }
      )
  return rows


def bench_versus(spec: str) -> list[dict]:
  import torch

  from benchmarks import torch_muscall

  config, mesh, _, state, step = _train_step(spec)
  host_batch = pipeline.train_dataset(config)[0]  # Texts padded to max_tokens: the original never trims.
  batch = parallel.to_global(host_batch, mesh)
  holder = {"state": state}

  def mclap_step():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)

  device = "cuda" if torch.cuda.is_available() else "cpu"
  vocab = tokenizer_lib.for_config(config).vocab_size
  model = torch_muscall.MusCALL(config, vocab=vocab).to(device).train()
  mels = torch.from_numpy(np.asarray(host_batch["mel"], np.float32)).to(device)
  ids = torch.from_numpy(np.asarray(host_batch["tokens"], np.int64)).to(device)
  amp = {"float32": None} if device == "cpu" else {"float16 AMP": torch.float16, "bfloat16 AMP": torch.bfloat16}
  runs = {f"mclap {config.train.dtype}": mclap_step}
  for name, dtype in amp.items():
    torch_step = torch_muscall.make_train_step(model, config, dtype)
    runs[f"PyTorch MusCALL {name}"] = lambda torch_step=torch_step: (torch_step(mels, ids), _sync(torch, device))
  rates = {name: [] for name in runs}
  for _ in range(_ROUNDS.value):  # Alternating, so that both see the same machine state.
    for name, run in runs.items():
      rates[name].append(_STEPS.value * config.train.batch_size / time_batches(run, _STEPS.value))
  ours = max(rates[f"mclap {config.train.dtype}"])
  # Both sides do the same work, so the count of mclap's step is the FLOPs of either; set against
  # the best kernel each framework runs on this device, it bounds what any ratio can reach.
  work = flops.count(step, holder["state"], batch) / config.train.batch_size
  peaks = {**measure_peak(config.train.dtype), **_torch_peak(torch, device, config.train.dtype)}
  return [
    {
      "bench": "versus",
      "config": spec,
      "implementation": name,
      "batch_size": config.train.batch_size,
      "tokens": int(host_batch["tokens"].shape[-1]),
      "device": device,
      "examples_per_s_by_round": [round(r, 2) for r in per_round],
      "mclap_ratio": round(ours / max(per_round), 2),
      "gflops_per_example": round(work / 1e9, 3),
      "best_gflop_per_s": round(max(per_round) * work / 1e9, 1),
      **peaks,
      "torch": torch.__version__,
    }
    for name, per_round in rates.items()
  ]


def _torch_peak(torch, device: str, dtype: str) -> dict:
  """PyTorch's rate on a 4096^2 matmul in mclap's dtype, the counterpart of `measure_peak`'s."""
  a = torch.randn(4096, 4096, device=device, dtype=getattr(torch, dtype))
  run = lambda: (a @ a, _sync(torch, device))  # noqa: E731
  seconds = time_batches(run, 5) / 5
  return {"torch_peak_matmul_gflop_per_s": round(2 * 4096**3 / seconds / 1e9, 1)}


def _sync(torch, device: str) -> None:
  if device == "cuda":
    torch.cuda.synchronize()


def bench_loop(spec: str) -> list[dict]:
  """The training job as users run it, in a subprocess: steady rate, input wait, start-up."""
  config = load_config(spec)
  config.train.batch_size = _MODEL_BATCH.value  # Before the corpus, which holds two batches.
  corpus = bench_corpus(config)
  workers, rows = _worker_counts(config)[-1], []
  with tempfile.TemporaryDirectory() as tmp:
    cache = pathlib.Path(tmp) / "compilation_cache"
    steps = _LOOP_STEPS.value  # The same for both starts: the step count is part of the compiled schedule.
    for start in ("cold", "warm"):
      workdir = pathlib.Path(tmp) / f"{start}-{workers}"
      overrides = {
        "data.dir": corpus,
        "data.num_workers": workers,
        "train.batch_size": _MODEL_BATCH.value,
        "train.dtype": _DTYPE.value,
        "train.steps": steps,
        "train.log_every": max(1, min(20, steps // 5)),
        "train.eval_every": steps,
        "train.ckpt_every": steps,
      }
      traced = range(0)
      if start == "warm" and _PROFILE_DIR.value:
        after = overrides["train.log_every"] + 1  # Past the first window, which also holds warm-up.
        overrides.update({"train.profile_steps": _PROFILE_STEPS.value, "train.profile_after": after})
        traced = range(after + 1, after + 1 + _PROFILE_STEPS.value)
      args = ["--config", str(ROOT / spec), "--workdir", str(workdir), f"--compilation_cache={cache}"]
      args += [f"--config.{item}" for item in _SET.value] + [f"--config.{k}={v}" for k, v in overrides.items()]
      began = time.perf_counter()
      job = subprocess.run([sys.executable, "-m", "mclap.train", *args], cwd=ROOT, capture_output=True, text=True)
      wall = time.perf_counter() - began
      if job.returncode:
        raise RuntimeError(f"mclap.train failed:\n{job.stdout[-3000:]}\n{job.stderr[-3000:]}")
      logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
      train_rows = [r for r in logged if "train/loss" in r]
      steady = [r for r in train_rows if "train/startup_s" not in r]  # The first row may time no step.
      window = overrides["train.log_every"]  # A row times the steps since the row before it.
      steady = [r for r in steady if not any(r["step"] - window < t <= r["step"] for t in traced)]
      row = {
        "bench": "loop",
        "config": spec,
        "start": start,
        "batch_size": _MODEL_BATCH.value,
        "dtype": _DTYPE.value,
        "workers": workers,
        "steps": steps,
        "startup_s": train_rows[0]["train/startup_s"],
        "job_wall_s": round(wall, 1),
      }
      if traced:
        out = pathlib.Path(_PROFILE_DIR.value)
        out.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]", "_", spec)
        for file in (workdir / "plugins/profile").glob("*/*"):  # TensorBoard's xplane.pb and Perfetto's trace.
          if file.name.endswith(("xplane.pb", "perfetto_trace.json.gz")):
            shutil.copy(file, out / f"{name}-{file.name}")
        row["profiled_steps"] = f"{traced.start}-{traced.stop - 1}"
      if steady:
        row["examples_per_s"] = round(float(np.median([r["train/examples_per_s"] for r in steady])), 2)
        row["input_wait_fraction"] = round(float(np.mean([r["train/input_wait_fraction"] for r in steady])), 3)
        row["tflop_per_s_per_device"] = round(float(np.median([r["train/tflop_per_s_per_device"] for r in steady])), 4)
        row["validation_s"] = next(r["val/seconds"] for r in logged if "val/seconds" in r)
      rows.append(row)
  return rows


def bench_towers(spec: str) -> list[dict]:
  config = load_config(spec)
  config.train.dtype = _DTYPE.value
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  model_def, state = trainer.init_state(config, mesh, trainer.make_optimizer(config, 1000))
  graphdef, params = nnx.split(model_def.merge(state).model)
  batch, rng = _MODEL_BATCH.value, np.random.default_rng(0)
  rows, frames = spec_lib.input_shape(config)  # Mel bands, or feature dimensions (a features tower).
  mel = jnp.asarray(rng.normal(size=(batch, rows, frames)), jnp.float32)
  audio = lambda p, mel: nnx.merge(graphdef, p).audio_features(mel, False).sum()  # noqa: E731
  text = lambda p, tokens, mask: nnx.merge(graphdef, p).text_features(tokens, mask).sum()  # noqa: E731
  parts = [("audio", audio, (mel,), None)]
  for length in sorted({config.data.max_tokens, 32}):
    tokens = jnp.asarray(rng.integers(1, 1000, size=(batch, length)), jnp.int32)
    parts.append(("text", text, (tokens, jnp.ones_like(tokens)), length))
  rows = []
  for tower, fn, inputs, length in parts:
    for mode, jitted in (("forward", jax.jit(fn)), ("forward+backward", jax.jit(jax.grad(fn)))):
      work = flops.count(jitted, params, *inputs)
      seconds = time_batches(lambda j=jitted, i=inputs: jax.block_until_ready(j(params, *i)), _STEPS.value)
      rows.append(
        {
          "bench": "tower",
          "config": spec,
          "tower": tower,
          "mode": mode,
          "batch_size": batch,
          "dtype": config.train.dtype,
          **({"tokens": length} if length else {}),
          "ms_per_batch": round(1000 * seconds / _STEPS.value, 1),
          "gflop_per_s": round(work * _STEPS.value / seconds / 1e9, 1),
        }
      )
  return rows


# LAION-CLAP's released audio towers (HTS-AT tiny and base: docs/papers.md), 10 s at 48 kHz.
_HTSAT_SIZES = {
  "htsat_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2)),
  "htsat_base": dict(embed_dim=128, depths=(2, 2, 12, 2)),
}


def bench_audio_towers(spec: str) -> list[dict]:
  """Inference embedding throughput of each audio tower alone: the config's (MusCALL's ResNet at
  its crop length) beside LAION-CLAP's HTS-AT sizes on their 10 s crops, random weights and mels."""
  config = load_config(spec)
  dtype, rngs, rng = jnp.dtype(_DTYPE.value), nnx.Rngs(0), np.random.default_rng(0)
  resnet = {k: v for k, v in spec_from_config(config).audio.items() if k != "kind"}
  frames = mel_lib.num_frames(config.data.crop_seconds, config.data.mel)
  clap = mel_lib.clap_config()
  clap_frames = mel_lib.num_frames(10.0, clap)
  towers = {
    "modified_resnet": (
      ModifiedResNet(**resnet, n_mels=config.data.mel.n_mels, frames=frames, remat="none", dtype=dtype, rngs=rngs),
      (config.data.mel.n_mels, frames, config.data.crop_seconds),
    ),
    **{
      name: (
        HTSAT(
          n_mels=clap.n_mels, frames=clap_frames, spec_size=256, patch_size=4, heads=(4, 8, 16, 32), window_size=8,
          mlp_ratio=4.0, remat="none", dtype=dtype, rngs=rngs, **size,
        ),
        (clap.n_mels, clap_frames, 10.0),
      )
      for name, size in _HTSAT_SIZES.items()
    },
  }  # fmt: skip
  rows, batch = [], _MODEL_BATCH.value
  for name, (tower, (n_mels, length, seconds)) in towers.items():
    graphdef, state = nnx.split(tower)
    forward = jax.jit(lambda s, mel, g=graphdef: nnx.merge(g, s)(mel, False))
    mel = jnp.asarray(rng.normal(-40.0, 15.0, size=(batch, n_mels, length)), jnp.float32)
    work = flops.count(forward, state, mel)
    elapsed = time_batches(lambda f=forward, m=mel, s=state: jax.block_until_ready(f(s, m)), _STEPS.value)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(tower, nnx.Param)))
    rows.append(
      {
        "bench": "audio_tower",
        "tower": name,
        "parameters": int(params),
        "crop_seconds": seconds,
        "mel": [n_mels, length],
        "batch_size": batch,
        "dtype": _DTYPE.value,
        "ms_per_batch": round(1000 * elapsed / _STEPS.value, 1),
        "clips_per_s": round(batch * _STEPS.value / elapsed, 2),
        "audio_seconds_per_s": round(seconds * batch * _STEPS.value / elapsed, 1),
        "gflop_per_clip": round(work / batch / 1e9, 2),
      }
    )
  return rows


def bench_memory(spec: str) -> list[dict]:
  config = load_config(spec)
  mesh = parallel.make_mesh({"data": -1, "model": 1})
  rows = []
  for loss, texts_per_clip in (("infonce", 1), ("siglip", 1), ("siglip", 3)):
    config.loss = dict(name=loss, bias_init=-10.0)
    config.data.texts_per_clip = texts_per_clip  # 3: the multi-positive sigmoid loss.
    for global_batch in (64, 256, 1024, 4096):
      sizes = memory.loss_step_bytes(config, mesh, global_batch, 512)
      rows.append(
        {
          "bench": "loss_memory",
          "loss": loss,
          "texts_per_clip": texts_per_clip,
          "devices": mesh.shape[parallel.DATA],
          "global_batch": global_batch,
          "temp_mb": round(sizes["temp"] / 2**20, 2),
          "total_mb": round(sizes["total"] / 2**20, 2),
        }
      )
  config = load_config(spec)
  config.data.dir = str(bench_corpus(config))
  config.train.update(batch_size=_MODEL_BATCH.value, dtype=_DTYPE.value)
  batch = parallel.trim_token_padding(pipeline.train_dataset(config)[0], config.data.token_bucket)
  one_device = parallel.make_mesh({"data": -1, "model": 1}, devices=jax.devices()[:1])
  for remat, sub_batches in (("none", 1), ("dots", 1), ("full", 1), ("none", 2), ("none", 4)):
    config.train.update(remat=remat, sub_batches=sub_batches)
    sizes = memory.train_step_bytes(config, one_device, batch)
    rows.append(
      {
        "bench": "train_step_memory",
        "config": spec,
        "batch_size": config.train.batch_size,
        "dtype": config.train.dtype,
        "remat": remat,
        "sub_batches": sub_batches,
        "temp_mb": round(sizes["temp"] / 2**20, 1),
        "total_mb": round(sizes["total"] / 2**20, 1),
      }
    )
  return rows


def bench_search(spec: str = "configs/muscall.py") -> list[dict]:
  config = cli.load_config(spec)
  config.train.dtype = "float32"
  work = pathlib.Path(tempfile.mkdtemp(prefix="mclap-search-bench-"))
  model_spec = spec_from_config(config)
  variables = bundle.variables_of(build_model(model_spec, nnx.Rngs(0)))
  tokenizer_dir = tokenizer_lib.for_config(config).directory
  bundle.write(work / "bundle", config, model_spec, variables, source={"benchmark": spec}, tokenizer_dir=tokenizer_dir)
  meta = bundle.read_meta(work / "bundle")
  dim = config.model.projection_dim
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((_INDEX_SIZE.value, dim)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  items = [{"path": f"track{i:06d}.mp3", "seconds": 30.0} for i in range(len(embeddings))]
  index_lib.write_part(work / "index", embeddings, items)
  info = {"bundle": str(work / "bundle"), "bundle_id": meta["id"], "dim": dim, "audio_dir": str(work), "crops": 1}
  index_lib.consolidate(work / "index", info)
  start = time.perf_counter()
  index = index_lib.Index(work / "index")
  open_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded = mclap.load(work / "bundle", batch_size=1)
  load_s = time.perf_counter() - start
  queries = [f"calm piano with strings, take {i}" for i in range(21)]
  start = time.perf_counter()
  search.search(index, queries[:1], top_k=10, model=loaded)
  first_s = time.perf_counter() - start
  total, ranking = [], []
  for query in queries[1:]:
    start = time.perf_counter()
    embedded = loaded.embed_text([query])
    middle = time.perf_counter()
    index.search(embedded, 10)
    end = time.perf_counter()
    total.append(end - start)
    ranking.append(end - middle)
  tracks = prepare_tracks()
  embedder = mclap.load(work / "bundle", batch_size=16)
  embedder.embed_audio(sorted(tracks.glob("*.flac"))[:1])  # Compile.
  start = time.perf_counter()
  embedded_info = embed.embed_folder(work / "bundle", tracks, work / "folder", show_progress=False, model=embedder)
  embed_s = time.perf_counter() - start
  shutil.rmtree(work)
  return [
    {
      "bench": "embed",
      "config": spec,
      "files": embedded_info["count"],
      "input": "30 s 44.1 kHz stereo MP3+FLAC",
      "threads": os.cpu_count(),
      "files_per_min": round(60 * embedded_info["count"] / embed_s, 1),
    },
    {
      "bench": "search",
      "config": spec,
      "index_size": len(index),
      "dim": dim,
      "open_index_s": round(open_s, 3),
      "load_bundle_s": round(load_s, 3),
      "first_query_s": round(first_s, 3),
      "query_median_ms": round(1000 * float(np.median(total)), 1),
      "query_max_ms": round(1000 * max(total), 1),
      "ranking_median_ms": round(1000 * float(np.median(ranking)), 1),
    },
  ]


def main(argv):
  del argv
  env = machine()
  runs = {
    "input": lambda: [row for spec in _CONFIGS.value for row in bench_input(spec)],
    "prepare": bench_prepare,
    "model": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_model(spec, measure_peak(_DTYPE.value))],
    "towers": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_towers(spec)],
    "audio_towers": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_audio_towers(spec)],
    "memory": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_memory(spec)],
    "search": bench_search,
    "versus": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_versus(spec)],
    "loop": lambda: [row for spec in _MODEL_CONFIGS.value for row in bench_loop(spec)],
  }
  for name in _BENCHMARKS.value:
    for row in runs[name]():
      print(json.dumps({**row, "machine": env}), flush=True)


if __name__ == "__main__":
  app.run(main)
