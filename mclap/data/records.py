"""The prepared corpus: record encoding, `dataset_info.json`, and a random-access reader.

A corpus directory holds, per split, ArrayRecord shards `<split>-NNNNN-of-MMMMM.array_record`
whose records are msgpack maps {id, mel (float16 [n_mels, frames]), captions, tags, label},
plus `dataset_info.json` (mel settings, splits with shard names and counts, tag vocabulary,
source, prepare version, the texts file's size), `rejects.jsonl` and `texts.jsonl` (every record's
id, captions and tags, split by split in record order: what reads texts alone, a frozen text
tower's table or a negative text, need not read the mels). Every source writes this format and one reader serves all of
them. A corpus of precomputed features (`prepare --source features`) stores `features` (float16
[dim, frames]) where others store the mel, and its `dataset_info.json` a `features` section (dim,
frame rate) instead of `mel`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import json
import mmap
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import grain
import msgpack
import numpy as np

from mclap import paths
from mclap.data import mel as mel_lib
from mclap.errors import UserError

INFO_FILE = "dataset_info.json"
REJECTS_FILE = "rejects.jsonl"
TEXTS_FILE = "texts.jsonl"  # Not in corpora of earlier versions: their texts are read from the records.
PROGRESS_DIR = ".progress"  # What prepare has done so far; a corpus without INFO_FILE is unfinished.
FORMAT_VERSION = 1


class CorpusError(UserError):
  """A prepared corpus is missing, corrupt, or does not match what the config expects."""


@dataclasses.dataclass(frozen=True)
class Reject:
  """An item that was skipped, and why (one line of `rejects.jsonl`)."""

  id: str
  reason: str
  detail: str = ""


INPUT_FIELDS = ("mel", "features")  # What a record holds of the audio, [rows, frames]: one of these.


def input_field(record_or_info: dict[str, Any]) -> str:
  """Which audio input a record (or a corpus's `dataset_info`) holds: "mel" or "features"."""
  return "features" if "features" in record_or_info else "mel"


def input_rows(info: dict[str, Any]) -> int:
  """Rows of a corpus's input arrays: its mel bands, or its feature dimension."""
  return int(info["features"]["dim"] if input_field(info) == "features" else info["mel"]["n_mels"])


def encode(record: dict[str, Any]) -> bytes:
  """Serialises one record; the input is stored as float16 to halve disk and host traffic."""
  field = input_field(record)
  array = np.ascontiguousarray(record[field], dtype=np.float16)
  return msgpack.packb(
    {
      "id": str(record["id"]),
      field: array.tobytes(),
      f"{field}_shape": list(array.shape),
      "captions": [str(c) for c in record.get("captions", [])],
      "tags": [str(t) for t in record.get("tags", [])],
      "label": int(record.get("label", -1)),
    },
    use_bin_type=True,
  )


def decode(data: bytes) -> dict[str, Any]:
  """Inverse of `encode`; raises ValueError describing what is malformed."""
  try:
    raw = msgpack.unpackb(data, raw=False)
    field = input_field(raw)
    shape = tuple(int(d) for d in raw[f"{field}_shape"])
    array = np.frombuffer(raw[field], dtype=np.float16)
    if len(shape) != 2 or array.size != shape[0] * shape[1]:
      raise ValueError(f"{field} has {array.size} values, which does not fit shape {list(shape)}")
    return {
      "id": raw["id"],
      field: array.reshape(shape),
      "captions": list(raw["captions"]),
      "tags": list(raw["tags"]),
      "label": int(raw["label"]),
    }
  except (msgpack.UnpackException, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"malformed record ({type(e).__name__}: {e})") from e


def write_atomic(path: pathlib.Path, write: Callable[[BinaryIO], object]) -> None:
  """Writes a file with `write(file)` so that readers never see it half-written (write, fsync,
  rename); a write that fails leaves the previous file, and no partial one beside it."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    raise


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
  write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def is_corpus(path: pathlib.Path) -> bool:
  return (path / INFO_FILE).is_file()


def read_info(corpus_dir: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(corpus_dir) / INFO_FILE
  if not path.is_file():
    if (path.parent / PROGRESS_DIR).is_dir():
      raise CorpusError(
        f"{corpus_dir} is a corpus whose preparation did not finish (it has no {INFO_FILE} yet; if prepare "
        f"stopped on rejects, {REJECTS_FILE} says why): re-run the same prepare command, which resumes it"
      )
    remedy = "create one with `python -m mclap.data.prepare --source ... --output DIR`"
    raise CorpusError(paths.not_found(corpus_dir, f"a prepared corpus (no {INFO_FILE} in it)", is_corpus, remedy))
  try:
    info = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise CorpusError(f"{path} is not valid JSON ({e}); re-run prepare on this directory.") from e
  if "mel" in info:
    info["mel"] = mel_lib.complete(info["mel"])
  return info


class CorpusReader:
  """Random access to the records of one split (a Grain `RandomAccessDataSource`).

  Shards are opened lazily, so the reader pickles cheaply into Grain worker processes. Any
  failure names the shard and record, and says what to do.
  """

  def __init__(self, corpus_dir: str | os.PathLike, split: str, require_captions: bool = False):
    self.require_captions = require_captions
    self.corpus_dir = pathlib.Path(corpus_dir)
    self.split = split
    self.info = read_info(corpus_dir)
    splits = self.info.get("splits", {})
    if split not in splits:
      raise CorpusError(
        f"split '{split}' not in {self.corpus_dir / INFO_FILE} (it has: {sorted(splits)}); "
        "set config.data.*_split to one of those."
      )
    self.shards = [s["file"] for s in splits[split]["shards"]]
    counts = [int(s["count"]) for s in splits[split]["shards"]]
    self._starts = np.cumsum([0] + counts).tolist()
    self._sources: list[grain.sources.ArrayRecordDataSource | None] = [None] * len(self.shards)
    self.field, self.rows = input_field(self.info), input_rows(self.info)

  def __len__(self) -> int:
    return self._starts[-1]

  def texts(self) -> Sequence[dict[str, Any]]:
    """{id, captions, tags} of each record, in order: from the corpus's `texts.jsonl`, else (a
    corpus prepared before it existed, or whose `dataset_info.json` an earlier version rewrote
    without it) the records themselves, read when asked for."""
    if not (entry := self.info.get("texts")):
      return self
    path = self.corpus_dir / entry["file"]
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
      raise CorpusError(
        f"{path} is missing or not the file {INFO_FILE} lists ({entry['bytes']} bytes): re-run the same prepare "
        "command, which rewrites it"
      )
    return SplitTexts(path, self.split, self.info)

  def __getstate__(self):
    return {**self.__dict__, "_sources": [None] * len(self.shards)}

  def _open(self, shard: int) -> grain.sources.ArrayRecordDataSource:
    if self._sources[shard] is None:
      path = self.corpus_dir / self.shards[shard]
      expected = self._starts[shard + 1] - self._starts[shard]
      if not path.is_file():
        raise CorpusError(f"shard {path} is missing; re-run prepare with the same --output.")
      try:
        source = grain.sources.ArrayRecordDataSource([str(path)])
      except Exception as e:  # array_record raises bare RuntimeErrors on damaged files.
        raise CorpusError(f"shard {path} is corrupt or truncated ({e}); delete it and re-run prepare.") from e
      if len(source) != expected:
        raise CorpusError(
          f"shard {path} holds {len(source)} records but {INFO_FILE} lists {expected}; delete it and re-run prepare."
        )
      self._sources[shard] = source
    return self._sources[shard]

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for split '{self.split}' ({len(self)})")
    shard = bisect.bisect_right(self._starts, index) - 1
    offset = index - self._starts[shard]
    where = f"record {offset} of shard {self.corpus_dir / self.shards[shard]}"
    try:
      data = self._open(shard)[offset]
    except CorpusError:
      raise
    except Exception as e:
      raise CorpusError(f"{where} cannot be read ({e}); delete the shard and re-run prepare.") from e
    try:
      record = decode(data)
    except ValueError as e:
      raise CorpusError(f"{where}: {e}; delete the shard and re-run prepare.") from e
    if self.field not in record or record[self.field].shape[0] != self.rows:
      held = next(f"{f} of shape {list(record[f].shape)}" for f in INPUT_FIELDS if f in record)
      raise CorpusError(
        f"{where} (id '{record['id']}'): {held}, expected {self.field} of shape [{self.rows}, frames] "
        f"as {INFO_FILE} says; delete the shard and re-run prepare."
      )
    if self.require_captions and not any(c.strip() for c in record["captions"]):
      raise CorpusError(
        f"{where} (id '{record['id']}') has no caption, which training on captions needs; "
        "fix the source and re-run prepare (it rejects empty captions)."
      )
    return record


class SplitTexts(Sequence):
  """The texts of one split's records, each line of `texts.jsonl` parsed when read. The file is
  mapped, not loaded: the worker processes that draw negative texts share its pages instead of
  each holding a copy of every caption."""

  def __init__(self, path: pathlib.Path, split: str, info: dict[str, Any]):
    counts = {name: int(s["count"]) for name, s in info["splits"].items()}  # The file's order.
    self.path, self.split = path, split
    self._first = sum(counts[name] for name in itertools.takewhile(lambda name: name != split, counts))
    self._count, self._total = counts[split], sum(counts.values())
    self._lines: tuple[mmap.mmap, np.ndarray] | None = None
    self._open()  # Checked here, before any worker starts.

  def __len__(self) -> int:
    return self._count

  def __getstate__(self):
    return {**self.__dict__, "_lines": None}  # Each process maps the file itself.

  def _open(self) -> tuple[mmap.mmap, np.ndarray]:
    """(the mapped file, the offsets of its line ends)."""
    if self._lines is None:
      with open(self.path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self._total else b""
      ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
      if len(ends) != self._total:
        raise CorpusError(
          f"{self.path} has {len(ends)} lines, {INFO_FILE} lists {self._total} records: re-run the same prepare "
          "command, which rewrites it"
        )
      self._lines = data, ends
    return self._lines

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self._count:
      raise IndexError(f"record {index} out of range for split '{self.split}' ({self._count})")
    data, ends = self._open()
    line = self._first + index
    start = int(ends[line - 1]) + 1 if line else 0
    try:
      entry = json.loads(data[start : int(ends[line])])
      if entry["split"] != self.split:
        raise ValueError(f"it is of split '{entry['split']}', where {INFO_FILE} puts split '{self.split}'")
      return {"id": entry["id"], "captions": list(entry["captions"]), "tags": list(entry["tags"])}
    except (ValueError, KeyError, TypeError) as e:
      raise CorpusError(
        f"{self.path} line {line + 1} is damaged ({type(e).__name__}: {e}); re-run the same prepare command, which "
        "rewrites it"
      ) from e
