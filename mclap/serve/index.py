"""An embedding index of an audio collection: what `python -m mclap.embed` writes and
`python -m mclap.search` ranks.

```
E/index.json          version, bundle (path and id), dimension, count, audio folder, data directory
E/data-<N>/embeddings.npy   float32 [count, dim], L2-normalised (memory-mapped when searched)
E/data-<N>/items.jsonl      one line per row: {"path": relative to the audio folder, "seconds": ...,
                      "file_state": [size, modification time] when it was read}
E/parts/part-*.npz    embedded since the last consolidation (an interrupted or running job)
E/rejects.jsonl       files that could not be embedded, with the reason (and file_state)
E/decoder.log         what native decoders printed while embedding (their notes on broken files)
```

`index.json` is replaced atomically last, so a reader sees the previous complete index or the new
one, never a mix; finished parts survive an interruption and are not embedded again. Each
consolidation follows the folder: a file embedded again (it changed) keeps only its new row, and
files gone from the folder leave the index and the rejects.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import uuid
from typing import Any

import numpy as np

from mclap import paths
from mclap.data import records
from mclap.errors import UserError

VERSION = 1
INDEX_FILE, PARTS_DIR, REJECTS_FILE, DECODER_LOG = "index.json", "parts", "rejects.jsonl", "decoder.log"
_DATA_DIR = re.compile(r"data-[0-9a-f]{8}")  # An index's embeddings and items, named anew at each commit.


class IndexFileError(UserError):
  """An index directory is missing or damaged."""


def is_index(path: pathlib.Path) -> bool:
  return (path / INDEX_FILE).is_file()


class Index:
  """A consolidated index, opened for search (embeddings memory-mapped)."""

  def __init__(self, directory: str | pathlib.Path):
    self.directory = pathlib.Path(directory)
    path = self.directory / INDEX_FILE
    if not path.is_file():
      remedy = f"build it with python -m mclap.embed --output {self.directory}"
      raise IndexFileError(paths.not_found(self.directory, f"a search index (no {INDEX_FILE} in it)", is_index, remedy))
    self.info = json.loads(path.read_text())
    data = self.directory / self.info["data"]
    self.embeddings = np.load(data / "embeddings.npy", mmap_mode="r")
    self.items = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    if len(self.items) != len(self.embeddings) or len(self.items) != self.info["count"]:
      raise IndexFileError(f"{data} is inconsistent ({len(self.items)} items, {len(self.embeddings)} embeddings)")

  def __len__(self) -> int:
    return len(self.items)

  def rows_of_file(self, path: str | pathlib.Path) -> set[int]:
    """The row of a file of the indexed folder (empty if the file is not in the index)."""
    target, root = pathlib.Path(path).resolve(), pathlib.Path(self.info["audio_dir"]).resolve()
    if not target.is_relative_to(root):
      return set()
    relative = str(target.relative_to(root))
    return {row for row, item in enumerate(self.items) if item["path"] == relative}

  def search(self, queries: np.ndarray, top_k: int, exclude: set[int] | None = None) -> list[list[tuple[int, float]]]:
    """Per query embedding `[n, dim]`, the `top_k` (row, cosine similarity) pairs, best first."""
    scores = np.asarray(queries, np.float32) @ self.embeddings.T
    if exclude:
      scores[:, sorted(exclude)] = -np.inf
    k = min(top_k, scores.shape[1] - len(exclude or ()))
    results = []
    for row in scores:
      top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
      top = top[np.argsort(-row[top], kind="stable")][:k]
      results.append([(int(i), float(row[i])) for i in top])
    return results


def existing(directory: pathlib.Path) -> Index | None:
  """The last consolidation of `directory` (embeddings memory-mapped), None before the first."""
  return Index(directory) if (directory / INDEX_FILE).is_file() else None


def read_parts(directory: pathlib.Path) -> tuple[list[np.ndarray], list[dict]]:
  """Embeddings and items of the finished parts (a part is written atomically, so all are whole)."""
  embeddings, items = [], []
  for part in sorted((directory / PARTS_DIR).glob("part-*.npz")):
    with np.load(part) as data:
      embeddings.append(data["embeddings"])
      items += json.loads(str(data["items"]))
  return embeddings, items


def other_files(directory: pathlib.Path) -> list[str]:
  """Names in `directory` that an index (finished, or of a job stopped before its first commit)
  does not hold, hidden ones aside: a folder of other files, where an index must not go."""
  own = {INDEX_FILE, PARTS_DIR, REJECTS_FILE, DECODER_LOG}
  return paths.other_names(directory, lambda name: name in own or bool(_DATA_DIR.fullmatch(name)))


def write_part(directory: pathlib.Path, embeddings: np.ndarray, items: list[dict]) -> None:
  parts = directory / PARTS_DIR
  parts.mkdir(parents=True, exist_ok=True)
  name = f"part-{len(list(parts.glob('part-*.npz'))):06d}-{uuid.uuid4().hex[:8]}.npz"
  arrays = dict(embeddings=embeddings.astype(np.float32), items=np.asarray(json.dumps(items)))
  records.write_atomic(parts / name, lambda f: np.savez(f, **arrays))


def read_rejects(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
  """Per rejected file, its latest record: {"path", "reason", "file_state"} (no state in indexes
  written before it was kept)."""
  path = directory / REJECTS_FILE
  lines = path.read_text().splitlines() if path.is_file() else []
  return {r["path"]: r for r in map(json.loads, lines)}


def add_reject(directory: pathlib.Path, path: str, reason: str, file_state: list[int] | None) -> None:
  with open(directory / REJECTS_FILE, "a", encoding="utf-8") as f:
    f.write(json.dumps({"path": path, "reason": reason, "file_state": file_state}, ensure_ascii=False) + "\n")


def is_current(recorded: list[int] | None, now: list[int] | None) -> bool:
  """Whether a row or reject made of a file in the `recorded` state is of the file as it is `now`
  (indexes written before the state was kept recorded none: taken as current)."""
  return recorded is None or recorded == now


def consolidate(
  directory: pathlib.Path, info: dict[str, Any], states: dict[str, list[int] | None] | None = None
) -> dict[str, Any]:
  """Merges the last consolidation and the finished parts into a new data directory, then points
  `index.json` at it (the commit) and removes what it replaces. With `states` (the folder's files
  now and their `paths.file_state`), rows and rejects of files gone or since changed are left
  out. Returns the new index.json."""
  old = existing(directory)
  part_embeddings, part_items = read_parts(directory)
  items = old.items if old is not None else []
  blocks = ([old.embeddings] if old is not None else []) + part_embeddings
  embeddings = np.concatenate(blocks) if blocks else np.zeros((0, info["dim"]), np.float32)
  items = items + part_items

  def current(path: str, record: dict[str, Any]) -> bool:  # Made of a file of the folder as it is now.
    return states is None or (path in states and is_current(record.get("file_state"), states[path]))

  # A job stopped after its commit but before removing the parts would add rows twice: one each.
  last = {item["path"]: row for row, item in enumerate(items) if current(item["path"], item)}
  keep = sorted(last.values())
  embeddings, items = embeddings[keep], [items[i] for i in keep]
  rejects = [r for p, r in read_rejects(directory).items() if p not in last and current(p, r)]
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
  records.write_text_atomic(directory / REJECTS_FILE, lines)
  data = f"data-{uuid.uuid4().hex[:8]}"
  (directory / data).mkdir()
  np.save(directory / data / "embeddings.npy", embeddings.astype(np.float32))
  (directory / data / "items.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
  info = {**info, "version": VERSION, "count": len(items), "data": data}
  records.write_json_atomic(directory / INDEX_FILE, info)
  for stale in directory.glob("data-*"):  # The replaced one, and any left by a job stopped before its commit.
    if stale.name != data and _DATA_DIR.fullmatch(stale.name):
      shutil.rmtree(stale, ignore_errors=True)
  shutil.rmtree(directory / PARTS_DIR, ignore_errors=True)
  return info
