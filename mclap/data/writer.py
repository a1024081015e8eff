"""Parallel, resumable writer of prepared corpora; every `prepare` source runs through it.

A source supplies items per split (small picklable descriptions: a clip spec, a file path) and a
top-level `work_fn(item) -> record | Reject` that does the heavy part (render or decode, then
log-mel) in worker processes. The writer groups items into fixed shards, writes each shard to a
temporary file and renames it when complete, then records a small manifest; a re-run skips every
shard whose manifest matches its plan and redoes the rest. Bad items become `Reject`s in
`rejects.jsonl`; they never stop the job.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import threadpoolctl
import tqdm
from array_record.python import array_record_module

import mclap
from mclap.data import records


@dataclasses.dataclass(frozen=True)
class Reject:
  """An item that was skipped, and why (one line of `rejects.jsonl`)."""

  id: str
  reason: str
  detail: str = ""


WorkFn = Callable[[Any], "dict[str, Any] | Reject"]
_PROGRESS_DIR = ".progress"


@dataclasses.dataclass(frozen=True)
class _Job:
  """What a worker does with one item: run the work function, validate, shrink the mel to float16.

  Validating and converting in the workers keeps the parent (which only writes) light and halves
  the bytes sent back.
  """

  work_fn: WorkFn
  n_mels: int
  require_captions: bool

  def __call__(self, item: Any) -> dict[str, Any] | Reject:
    try:
      result = self.work_fn(item)
    except Exception as e:  # One bad input must never stop the job.
      result = Reject(id=_item_id(item), reason="error", detail=f"{type(e).__name__}: {e}")
    if isinstance(result, Reject):
      return Reject(id=printable(result.id), reason=result.reason, detail=printable(result.detail))
    result = {**result, "id": printable(str(result["id"]))}  # A file name that is not UTF-8 still names it.
    if problem := _check_record(result, self.n_mels, self.require_captions):
      return Reject(id=result["id"], reason=problem)
    return {**result, "mel": np.asarray(result["mel"], np.float16)}


def _item_id(item: Any) -> str:
  """What names an item whose work gave no record: its `id`, else the item itself."""
  return str(getattr(item, "id", item))


def printable(text: str) -> str:
  """`text` with bytes that were not UTF-8 (lone surrogates) written as escapes."""
  return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


_job: _Job | None = None


def _init_worker(job: _Job) -> None:
  global _job
  _job = job
  threadpoolctl.threadpool_limits(1)  # See `_results`.


def _run(item: Any) -> dict[str, Any] | Reject:
  return _job(item)


def _ready(_: int) -> None:
  """A task that returns once a worker has started."""


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def _check_record(record: dict[str, Any], n_mels: int, require_captions: bool) -> str | None:
  """Why a rendered/decoded record cannot be stored, or None if it is fine."""
  texts = [str(t) for t in (*record.get("captions", []), *record.get("tags", []))]
  if any(printable(t) != t for t in texts):
    return "caption not UTF-8"
  if require_captions and not any(str(c).strip() for c in record.get("captions", [])):
    return "empty caption"
  mel = np.asarray(record["mel"])
  if mel.ndim != 2 or mel.shape[0] != n_mels or mel.shape[1] < 1:
    return f"mel shape {list(mel.shape)} is not [{n_mels}, frames]"
  if not np.isfinite(mel).all():
    return "non-finite mel values"
  return None


@dataclasses.dataclass
class _Shard:
  split: str
  index: int
  items: Sequence[Any]
  file: str
  fingerprint: str


def describe(work_fn: WorkFn) -> str:
  """A description of a work function and its bound settings that is stable across runs (no
  memory addresses), so a shard is reused only if it was made the same way."""
  if isinstance(work_fn, functools.partial):
    return repr((describe(work_fn.func), work_fn.args, sorted(work_fn.keywords.items())))
  return f"{work_fn.__module__}.{work_fn.__qualname__}"


def _plan(splits: dict[str, Sequence[Any]], shard_size: int, settings: dict[str, Any]) -> list[_Shard]:
  shards = []
  for split, items in splits.items():
    count = math.ceil(len(items) / shard_size)
    for k in range(count):
      part = items[k * shard_size : (k + 1) * shard_size]
      digest = hashlib.sha1(repr((settings, list(part))).encode()).hexdigest()
      shards.append(_Shard(split, k, part, shard_name(split, k, count), digest))
  return shards


def _load_manifest(out: pathlib.Path, shard: _Shard) -> dict[str, Any] | None:
  """The manifest of a finished shard, or None if the shard must be (re)done."""
  path = out / _PROGRESS_DIR / (shard.file + ".json")
  if not (path.is_file() and (out / shard.file).is_file()):
    return None
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError:
    return None
  return manifest if manifest.get("fingerprint") == shard.fingerprint else None


def _remove_stale(out: pathlib.Path, shards: list[_Shard], split_names: Sequence[str]) -> None:
  """Deletes shards of these splits left by an earlier run with a different plan."""
  keep = {s.file for s in shards}
  names = "|".join(map(re.escape, split_names))
  pattern = re.compile(rf"^({names})-\d{{5}}-of-\d{{5}}\.array_record(\.tmp)?$")
  for path in out.iterdir():
    if pattern.match(path.name) and path.name not in keep:
      path.unlink()
      (out / _PROGRESS_DIR / (path.name + ".json")).unlink(missing_ok=True)


def _results(
  job: _Job, items: Sequence[Any], num_workers: int, item_timeout: float
) -> Iterator[dict[str, Any] | Reject]:
  """Job results in item order, from a spawned process pool or inline.

  Either way the work runs with one BLAS/OpenMP thread: parallelism comes from the processes
  (measured: with their own thread pools, 2 workers on 2 cores were no faster than 1, and 1.5x
  faster without), and the mel bytes must not depend on the number of workers.

  In the pool, an item without a result after `item_timeout` seconds (a decoder that hangs, or
  a worker killed by a crash in native code, whose item the pool then never returns) is rejected
  and the pool restarted for the items after it, so the job never hangs.
  """
  if num_workers == 0:
    with threadpoolctl.threadpool_limits(1):
      yield from map(job, items)
    return
  ctx = multiprocessing.get_context("spawn")
  done = 0
  while done < len(items):
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(job,)) as pool:
      pool.map(_ready, range(num_workers), chunksize=1)  # Worker start-up does not count against an item.
      results = pool.imap(_run, items[done:], chunksize=1)
      try:
        while done < len(items):
          result = results.next(timeout=item_timeout)
          done += 1
          yield result
      except multiprocessing.TimeoutError:
        item = items[done]
        done += 1
        detail = f"no result after {item_timeout:g}s: the decoder hung or crashed its worker process"
        yield Reject(id=printable(_item_id(item)), reason="timed out", detail=detail)


def write_corpus(
  output_dir: str | os.PathLike,
  splits: dict[str, Sequence[Any]],
  work_fn: WorkFn,
  *,
  mel_config: dict[str, Any],
  source: str,
  extra_info: dict[str, Any] | None = None,
  num_workers: int | None = None,
  shard_size: int = 256,
  require_captions: bool = True,
  item_timeout: float = 300.0,
  show_progress: bool = True,
) -> dict[str, Any]:
  """Writes (or finishes) a prepared corpus and returns its `dataset_info`.

  Args:
    output_dir: corpus directory; created if needed.
    splits: split name -> items; `work_fn` turns each item into a record dict (see
      `records.encode`) or a `Reject`.
    work_fn: picklable top-level callable, run in `num_workers` spawned processes.
    mel_config: mel settings the records were computed with (stored in `dataset_info.json`).
    source: name of the data source, stored in `dataset_info.json`.
    extra_info: more `dataset_info.json` fields (for example `label_names`).
    num_workers: worker processes; 0 runs inline, None uses every core.
    shard_size: items per shard (the unit of resumption).
    require_captions: reject records without a non-empty caption (False for tagging-only sources).
    item_timeout: seconds a worker may spend on one item before it is rejected as hung.
    show_progress: draw a progress bar with rate and ETA on stderr.
  """
  out = pathlib.Path(output_dir)
  (out / _PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
  n_mels = int(mel_config["n_mels"])
  settings = {
    "mel": dict(mel_config),
    "source": source,
    "format": records.FORMAT_VERSION,
    "work": describe(work_fn),
    "require_captions": require_captions,
  }
  shards = _plan(splits, shard_size, settings)
  _remove_stale(out, shards, list(splits))
  manifests = {s.file: _load_manifest(out, s) for s in shards}
  todo = [s for s in shards if manifests[s.file] is None]
  total = sum(len(items) for items in splits.values())
  num_workers = os.cpu_count() if num_workers is None else num_workers
  seen_ids = {i for m in manifests.values() if m for i in m["ids"]}

  remaining = sum(len(s.items) for s in todo)
  start = time.time()
  bar = tqdm.tqdm(
    total=total,
    initial=total - remaining,
    unit="track",
    desc=f"prepare {source}",
    disable=not show_progress,
    file=sys.stderr,
    smoothing=0.1,
    mininterval=0.5 if sys.stderr.isatty() else 30.0,  # Keep logs of batch jobs short.
  )
  results = _results(
    _Job(work_fn, n_mels, require_captions),
    [item for s in todo for item in s.items],
    min(num_workers, remaining),
    item_timeout,
  )
  for shard in todo:
    tmp = out / (shard.file + ".tmp")
    writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
    manifest = {"fingerprint": shard.fingerprint, "ids": [], "tags": [], "rejects": []}
    tags = set()
    for _ in shard.items:
      result = next(results)
      bar.update(1)
      if not isinstance(result, Reject) and result["id"] in seen_ids:
        result = Reject(id=str(result["id"]), reason="duplicate id")
      if isinstance(result, Reject):
        manifest["rejects"].append(dataclasses.asdict(result))
        continue
      writer.write(records.encode(result))
      seen_ids.add(result["id"])
      manifest["ids"].append(result["id"])
      tags.update(result.get("tags", []))
    writer.close()
    os.replace(tmp, out / shard.file)
    manifest["tags"] = sorted(tags)
    records.write_json_atomic(out / _PROGRESS_DIR / (shard.file + ".json"), manifest)
    manifests[shard.file] = manifest
  bar.close()

  info = _finish(out, shards, manifests, list(splits), mel_config, source, extra_info or {})
  _print_summary(info, out, time.time() - start, len(todo), len(shards))
  return info


def _finish(out, shards, manifests, split_names, mel_config, source, extra_info) -> dict[str, Any]:
  """Writes `rejects.jsonl` and `dataset_info.json` from the shard manifests."""
  rejects = [dict(r, split=s.split) for s in shards for r in manifests[s.file]["rejects"]]
  tmp = out / (records.REJECTS_FILE + ".tmp")
  tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
  os.replace(tmp, out / records.REJECTS_FILE)
  split_info = {}
  for name in split_names:
    parts = [{"file": s.file, "count": len(manifests[s.file]["ids"])} for s in shards if s.split == name]
    split_info[name] = {"count": sum(p["count"] for p in parts), "shards": parts}
  info = {
    "format_version": records.FORMAT_VERSION,
    "prepare_version": mclap.__version__,
    "source": source,
    "mel": dict(mel_config),
    "splits": split_info,
    "tags": sorted({t for m in manifests.values() for t in m["tags"]}),
    "num_rejected": len(rejects),
    "rejected_by_reason": dict(collections.Counter(r["reason"] for r in rejects)),
    **extra_info,
  }
  records.write_json_atomic(out / records.INFO_FILE, info)
  return info


def _print_summary(info, out, seconds, shards_done, shards_total) -> None:
  splits = ", ".join(f"{k} {v['count']}" for k, v in info["splits"].items())
  print(
    f"prepared {out}: {splits}; rejected {info['num_rejected']} (see {records.REJECTS_FILE}); "
    f"wrote {shards_done} of {shards_total} shards in {seconds:.1f}s "
    f"({shards_total - shards_done} already done)",
    file=sys.stderr,
  )
