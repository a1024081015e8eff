"""Parallel, resumable writer of prepared corpora; every `prepare` source runs through it.

A source supplies items per split (small picklable descriptions: a clip spec, a file path) and a
top-level `work_fn(item) -> record | Reject` that does the heavy part (render or decode, then
log-mel) in worker processes. The writer groups items into fixed shards, writes each shard to a
temporary file and renames it when complete, then records a small manifest; a re-run skips every
shard whose manifest matches its plan and redoes the rest, and the shards whose rejects may have
been fixed since (a file that was missing or broken has changed; the worker crashed or hung).
Bad items become `Reject`s in `rejects.jsonl` and never stop the job, unless most items fail for
the same reason: then the job stops with that reason, since its corpus would be mostly missing.
"""

from __future__ import annotations

import ast
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
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import threadpoolctl
import tqdm
from array_record.python import array_record_module

import mclap
from mclap import paths
from mclap.data import mel as mel_lib
from mclap.data import records
from mclap.data.records import Reject
from mclap.errors import UserError

WorkFn = Callable[[Any], "dict[str, Any] | Reject"]
_SETTINGS_FILE = "settings.json"  # In records.PROGRESS_DIR: how the corpus in this directory is made.
_SHARD_PATTERN = re.compile(r"^[\w.-]+-\d{5}-of-\d{5}\.array_record(\.tmp)?$")
# Rejects whose cause lies in the environment rather than the item: retried on every re-run.
RETRIED_REASONS = ("error", "timed out")
# A job stops when more than this share of its items, and more than this many, fail for one reason
# (checked on the first items already, and at the end over all of them).
MASS_FAILURE_SHARE, MASS_FAILURE_COUNT = 0.5, 20
_HINTS = {
  "missing file": "the files are not where the source looks for them: check --input and --audio_dir",
  "unreadable": "the files cannot be decoded: check that they are audio files of a format libsndfile reads",
  "timed out": "the decoder hangs or crashes: run with --num_workers 0 to see how",
  "No module named": "a Python package is missing: install it (pip install -e . in mclap's folder)",
}


@dataclasses.dataclass(frozen=True)
class _Job:
  """What a worker does with one item: run the work function, validate, shrink the input (mel or
  features, `field`, of `rows` rows) to float16.

  Validating and converting in the workers keeps the parent (which only writes) light and halves
  the bytes sent back.
  """

  work_fn: WorkFn
  field: str
  rows: int
  require_captions: bool

  def __call__(self, item: Any) -> dict[str, Any] | Reject:
    try:
      result = self.work_fn(item)
    except Exception as e:  # One bad input must never stop the job.
      result = Reject(id=_item_id(item), reason="error", detail=f"{type(e).__name__}: {e}")
    if isinstance(result, Reject):
      return Reject(id=printable(result.id), reason=result.reason, detail=printable(result.detail))
    result = {**result, "id": printable(str(result["id"]))}  # A file name that is not UTF-8 still names it.
    if problem := _check_record(result, self.field, self.rows, self.require_captions):
      return Reject(id=result["id"], reason=problem)
    return {**result, self.field: np.asarray(result[self.field], np.float16)}


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
  # Ctrl-C reaches every process of the job: the job stops, and stops its pool (a worker it killed
  # lost its item and printed a traceback).
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(item: Any) -> dict[str, Any] | Reject:
  return _job(item)


def _ready(_: int) -> None:
  """A task that returns once a worker has started."""


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def _check_record(record: dict[str, Any], field: str, rows: int, require_captions: bool) -> str | None:
  """Why a rendered/decoded record cannot be stored, or None if it is fine."""
  texts = [str(t) for t in (*record.get("captions", []), *record.get("tags", []))]
  if any(printable(t) != t for t in texts):
    return "caption not UTF-8"
  if require_captions and not any(str(c).strip() for c in record.get("captions", [])):
    return "empty caption"
  array = np.asarray(record[field])
  if array.ndim != 2 or array.shape[0] != rows or array.shape[1] < 1:
    return f"{field} shape {list(array.shape)} is not [{rows}, frames]"
  if not np.isfinite(array).all():
    return f"non-finite {field} values"
  return None


@dataclasses.dataclass
class _Shard:
  split: str
  index: int
  items: Sequence[Any]
  file: str
  fingerprint: str


# Where mclap 0.1 kept the work functions of today's modules: corpora name their
# work function so, and a re-run must find the same settings and shard fingerprints to resume.
_FORMER_MODULES = {
  "mclap.prepare.decode": "mclap.data.sources",
  "mclap.prepare.synthetic": "mclap.data.synthetic",
  "mclap.prepare.tfds_source": "mclap.data.tfds_source",
}


def describe(work_fn: WorkFn) -> str:
  """A description of a work function and its bound settings that is stable across runs (no
  memory addresses) and releases, so a shard is reused only if it was made the same way."""
  if isinstance(work_fn, functools.partial):
    return repr((describe(work_fn.func), work_fn.args, sorted(work_fn.keywords.items())))
  return f"{_FORMER_MODULES.get(work_fn.__module__, work_fn.__module__)}.{work_fn.__qualname__}"


def _plan(splits: dict[str, Sequence[Any]], shard_size: int, settings: dict[str, Any]) -> list[_Shard]:
  shards = []
  for split, items in splits.items():
    count = math.ceil(len(items) / shard_size)
    for k in range(count):
      part = items[k * shard_size : (k + 1) * shard_size]
      digest = hashlib.sha1(repr((settings, list(part))).encode()).hexdigest()
      shards.append(_Shard(split, k, part, shard_name(split, k, count), digest))
  return shards


def _retry(reject: dict[str, Any], retry_rejects: bool) -> bool:
  """Whether a re-run must try a rejected item again."""
  if retry_rejects or reject["reason"] in RETRIED_REASONS:
    return True
  return bool(reject.get("path")) and paths.file_state(reject["path"]) != reject.get("file_state")


def _load_manifest(out: pathlib.Path, shard: _Shard, retry_rejects: bool) -> dict[str, Any] | None:
  """The manifest of a finished shard, or None if the shard must be (re)done."""
  manifest = _read_json(out / records.PROGRESS_DIR / (shard.file + ".json"))
  if (
    not ((out / shard.file).is_file() and isinstance(manifest, dict))
    or manifest.get("fingerprint") != shard.fingerprint
  ):
    return None
  return None if any(_retry(r, retry_rejects) for r in manifest["rejects"]) else manifest


def _claim(out: pathlib.Path, settings: dict[str, Any], overwrite: bool) -> None:
  """Makes `out` this job's: refuses a corpus made with other settings unless `overwrite`, which
  deletes it (its shards, manifests, rejects and info; nothing else in the directory)."""
  path = out / records.PROGRESS_DIR / _SETTINGS_FILE
  before = _read_json(path)
  if before is None and (info := _read_json(out / records.INFO_FILE)):  # Written before settings.json existed.
    before = {k: v for k, v in settings.items() if k not in records.INPUT_FIELDS}
    before.update(mel=mel_lib.complete(info.get("mel", {})), source=info.get("source"))
  if before is None and (others := _other_files(out)):
    raise UserError(
      f"{out} already holds files that are not a corpus ({paths.few(others)}): prepare writes a corpus into a new "
      "or empty folder; choose another --output"
    )
  if before is not None and before != settings:
    if not overwrite:
      changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
      raise UserError(
        f"{out} holds a corpus prepared with other settings ({', '.join(changed)} differ); choose another "
        "--output, or pass --overwrite to replace it"
      )
    shutil.rmtree(out / records.PROGRESS_DIR, ignore_errors=True)
    for name in (records.INFO_FILE, records.REJECTS_FILE, records.TEXTS_FILE):
      (out / name).unlink(missing_ok=True)
    _remove_stale(out, keep=set())
  (out / records.PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
  records.write_json_atomic(path, settings)


def _other_files(out: pathlib.Path) -> list[str]:
  """The names in `out` that a corpus does not write (`--output` naming the audio folder,
  or a home directory): its shards would be mixed in among them."""
  corpus = {records.INFO_FILE, records.REJECTS_FILE, records.TEXTS_FILE}
  return paths.other_names(out, lambda name: name in corpus or bool(_SHARD_PATTERN.match(name)))


def _read_json(path: pathlib.Path) -> Any:
  """A JSON file's content; None if it is missing or damaged (it is then rewritten)."""
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError):
    return None


def _remove_stale(out: pathlib.Path, keep: set[str]) -> None:
  """Deletes shards (of any split) that the current plan does not write, with their manifests."""
  for path in out.iterdir():
    if _SHARD_PATTERN.match(path.name) and path.name not in keep:
      path.unlink()
      (out / records.PROGRESS_DIR / (path.name + ".json")).unlink(missing_ok=True)


@dataclasses.dataclass
class _FailureWatch:
  """Stops a job whose items mostly fail for one reason (a wrong folder, a missing package): on
  the first `MASS_FAILURE_COUNT` results if they all do, or at the end."""

  allow: bool
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, Reject] = dataclasses.field(default_factory=dict)
  seen: int = 0

  def add(self, result: dict[str, Any] | Reject) -> None:
    self.seen += 1
    if isinstance(result, Reject):
      self.counts[result.reason] += 1
      self.examples.setdefault(result.reason, result)
    if self.seen == MASS_FAILURE_COUNT and len(self.counts) == 1 and self.counts.total() == self.seen:
      self._stop(*self.counts.most_common(1)[0], f"the first {self.seen}")

  def finish(self, rejects: list[dict[str, Any]], total: int) -> None:
    counts = collections.Counter(r["reason"] for r in rejects)
    for r in rejects:
      self.examples.setdefault(r["reason"], Reject(r["id"], r["reason"], r.get("detail", "")))
    if counts and (top := counts.most_common(1)[0])[1] > MASS_FAILURE_SHARE * total:
      self._stop(*top, str(total))

  def _stop(self, reason: str, count: int, of: str) -> None:
    if self.allow:
      return
    example = self.examples[reason]
    hint = next((h for key, h in _HINTS.items() if key in f"{reason} {example.detail}"), "see rejects.jsonl")
    detail = f" (e.g. {example.id}: {example.detail})" if example.detail else ""
    raise UserError(
      f"stopped: {count} of {of} items were rejected as '{reason}'{detail}; {hint}. Then run the same command "
      "again (or pass --allow_rejects to keep a corpus without them)"
    )


def _check_main_module(num_workers: int | None) -> None:
  """Worker processes are spawned, and each imports the main script again: a call at the script's
  top level, outside `if __name__ == "__main__":`, would run again in every worker, which would
  start workers of its own, forever. Such a call is refused before any worker starts."""
  main = sys.modules.get("__main__")
  script = getattr(main, "__file__", None)
  if num_workers == 0 or not script or not script.endswith(".py"):
    return
  frame = next(
    (f for f, _ in traceback.walk_stack(None) if f.f_code.co_name == "<module>" and f.f_code.co_filename == script),
    None,
  )
  if frame is None:
    return
  line = frame.f_lineno
  tree = ast.parse(pathlib.Path(script).read_text(encoding="utf-8"))
  if not any(
    isinstance(n, ast.If) and _is_main_test(n.test) and n.lineno <= line <= n.end_lineno for n in ast.walk(tree)
  ):
    raise UserError(
      f"{script} line {line} starts worker processes at the top level of a script: put that code under "
      '`if __name__ == "__main__":` (spawned workers import the script again), or pass num_workers=0'
    )


def _is_main_test(test: ast.expr) -> bool:
  """`__name__ == "__main__"`, either way round."""
  if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
    return False
  sides = {ast.dump(test.left), ast.dump(test.comparators[0])}
  return sides == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))}


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
  mel_config: dict[str, Any] | None = None,
  features: dict[str, Any] | None = None,
  source: str,
  extra_info: dict[str, Any] | None = None,
  num_workers: int | None = None,
  shard_size: int = 256,
  require_captions: bool = True,
  item_timeout: float = 300.0,
  show_progress: bool = True,
  overwrite: bool = False,
  retry_rejects: bool = False,
  allow_rejects: bool = False,
  check_items: Callable[[list[Any]], None] | None = None,
) -> dict[str, Any]:
  """Writes (or finishes) a prepared corpus and returns its `dataset_info`.

  Args:
    output_dir: corpus directory; created if needed.
    splits: split name -> items; `work_fn` turns each item into a record dict (see
      `records.encode`) or a `Reject`. An item with a `path` attribute names its file, which a
      re-run checks for changes if the item was rejected.
    work_fn: picklable top-level callable, run in `num_workers` spawned processes.
    mel_config: mel settings the records were computed with (stored in `dataset_info.json`).
    features: instead of `mel_config`, for records of precomputed features: `{dim, frame_rate}`.
    source: name of the data source, stored in `dataset_info.json`.
    extra_info: more `dataset_info.json` fields (for example `label_names`).
    num_workers: worker processes; 0 runs inline, None uses every core.
    shard_size: items per shard (the unit of resumption).
    require_captions: reject records without a non-empty caption (False for tagging-only sources).
    item_timeout: seconds a worker may spend on one item before it is rejected as hung.
    show_progress: draw a progress bar with rate and ETA on stderr.
    overwrite: replace a corpus that `output_dir` holds from other settings (else refused).
    retry_rejects: try every rejected item again (by default, those whose file changed, and
      those that failed for reasons of the environment: `RETRIED_REASONS`).
    allow_rejects: keep going when most items fail for one reason (else `UserError`).
    check_items: called with the items still to do before any worker starts: a source's cheap
      check that its files are where it looks (items already written need no files).
  """
  _check_main_module(num_workers)
  out = pathlib.Path(output_dir)
  paths.check_not_file(out, "--output", records.is_corpus)
  if (mel_config is None) == (features is None):
    raise ValueError("write_corpus takes mel_config or features, one of them")
  field, input_info = ("mel", dict(mel_config)) if features is None else ("features", dict(features))
  settings = {
    field: input_info,
    "source": source,
    "format": records.FORMAT_VERSION,
    "work": describe(work_fn),
    "require_captions": require_captions,
  }
  shards = _plan(splits, shard_size, settings)
  if check_items:  # Before the output is touched: a job stopped here leaves it as it was.
    check_items([item for s in shards if _load_manifest(out, s, retry_rejects) is None for item in s.items])
  _claim(out, settings, overwrite)
  _remove_stale(out, keep={s.file for s in shards})
  manifests = {s.file: _load_manifest(out, s, retry_rejects) for s in shards}
  todo = [s for s in shards if manifests[s.file] is None]
  if todo:  # Until the job ends, no dataset_info.json lists shards that are being replaced.
    (out / records.INFO_FILE).unlink(missing_ok=True)
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
    _Job(work_fn, field, records.input_rows(settings), require_captions),
    [item for s in todo for item in s.items],
    min(num_workers, remaining),
    item_timeout,
  )
  watch = _FailureWatch(allow_rejects)
  try:
    for shard in todo:
      manifests[shard.file] = _write_shard(out, shard, results, seen_ids, watch, bar)
  except KeyboardInterrupt:
    bar.close()
    sys.exit(f"interrupted; the finished shards are kept in {out}. Run the same command to resume.")
  finally:
    results.close()  # Stops the worker pool when the job stops early.
    bar.close()

  info = _finish(out, shards, manifests, list(splits), {field: input_info}, source, extra_info or {}, watch, total)
  _print_summary(info, out, time.time() - start, len(todo), len(shards))
  return info


def _write_shard(out, shard, results, seen_ids, watch, bar) -> dict[str, Any]:
  """Writes one shard from the next results (to a temporary file renamed when complete) and its
  manifest; returns the manifest."""
  tmp = out / (shard.file + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  manifest = {"fingerprint": shard.fingerprint, "ids": [], "texts": [], "tags": [], "rejects": []}
  tags = set()
  try:
    for item in shard.items:
      result = next(results)
      bar.update(1)
      if not isinstance(result, Reject) and result["id"] in seen_ids:
        result = Reject(id=str(result["id"]), reason="duplicate id")
      watch.add(result)
      if isinstance(result, Reject):
        path = str(getattr(item, "path", ""))
        file = {"path": path, "file_state": paths.file_state(path)} if path else {}
        manifest["rejects"].append({**dataclasses.asdict(result), **file})
        continue
      writer.write(records.encode(result))
      seen_ids.add(result["id"])
      manifest["ids"].append(result["id"])
      manifest["texts"].append(_texts(result))
      tags.update(result.get("tags", []))
  finally:
    writer.close()
  os.replace(tmp, out / shard.file)
  manifest["tags"] = sorted(tags)
  records.write_json_atomic(out / records.PROGRESS_DIR / (shard.file + ".json"), manifest)
  return manifest


def _texts(record: dict[str, Any]) -> list[list[str]]:
  """A record's [captions, tags], as a manifest keeps them for `texts.jsonl`."""
  return [[str(c) for c in record.get("captions", [])], [str(t) for t in record.get("tags", [])]]


def _write_texts(out: pathlib.Path, shards: list[_Shard], manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """`texts.jsonl` from the manifests, split by split in record order; a shard finished by an
  earlier version, whose manifest has no texts, is read for them. Returns its entry in
  `dataset_info.json`, which ties the file to the corpus it was written with."""

  def texts(shard: _Shard) -> list[list[list[str]]]:
    if "texts" in manifests[shard.file]:
      return manifests[shard.file]["texts"]
    source = array_record_module.ArrayRecordReader(str(out / shard.file))
    try:
      return [_texts(records.decode(data)) for data in source.read_all()]
    except ValueError as e:
      raise UserError(f"shard {out / shard.file}: {e}; delete it and re-run the same command") from e
    finally:
      source.close()

  def write(f) -> None:
    for shard in shards:
      for id_, (captions, tags) in zip(manifests[shard.file]["ids"], texts(shard), strict=True):
        line = {"split": shard.split, "id": id_, "captions": captions, "tags": tags}
        f.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))

  records.write_atomic(out / records.TEXTS_FILE, write)
  return {"file": records.TEXTS_FILE, "bytes": (out / records.TEXTS_FILE).stat().st_size}


def _finish(out, shards, manifests, split_names, input_info, source, extra_info, watch, total) -> dict[str, Any]:
  """Writes `rejects.jsonl` and, unless most items failed for one reason, `texts.jsonl` and
  `dataset_info.json` from the shard manifests."""
  rejects = [
    {**{k: v for k, v in r.items() if k != "file_state"}, "split": s.split}
    for s in shards
    for r in manifests[s.file]["rejects"]
  ]
  records.write_text_atomic(
    out / records.REJECTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
  )
  watch.finish(rejects, total)
  texts = _write_texts(out, shards, manifests)
  split_info = {}
  for name in split_names:
    parts = [{"file": s.file, "count": len(manifests[s.file]["ids"])} for s in shards if s.split == name]
    split_info[name] = {"count": sum(p["count"] for p in parts), "shards": parts}
  info = {
    "format_version": records.FORMAT_VERSION,
    "prepare_version": mclap.__version__,
    "source": source,
    **input_info,
    "splits": split_info,
    "texts": texts,
    "tags": sorted({t for m in manifests.values() for t in m["tags"]}),
    "num_rejected": len(rejects),
    "rejected_by_reason": dict(collections.Counter(r["reason"] for r in rejects)),
    **extra_info,
  }
  records.write_json_atomic(out / records.INFO_FILE, info)
  return info


def _print_summary(info, out, seconds, shards_done, shards_total) -> None:
  parts = [", ".join(f"{k} {v['count']}" for k, v in info["splits"].items()), f"rejected {info['num_rejected']}"]
  if info["num_rejected"]:
    parts[-1] += f" (see {records.REJECTS_FILE}; a re-run retries those whose file changed, --retry_rejects all)"
  # Items a source leaves out on purpose (not in the split lists, no tags ...), counted in `left_out_<why>`.
  parts += [
    f"left out {n} {k.removeprefix('left_out_').replace('_', ' ')}"
    for k, n in info.items()
    if k.startswith("left_out_") and n
  ]
  parts.append(
    f"wrote {shards_done} of {shards_total} shards in {seconds:.1f}s ({shards_total - shards_done} already done)"
  )
  print(f"prepared {out}: {'; '.join(parts)}", file=sys.stderr)
