"""What a user meant by a path that is one level off: the folder above or below the one a job
needs, a file inside it, or a name with a typo. Jobs name that folder in their one-line error
instead of only saying what is missing. A Hugging Face hub cache folder stands for the model
folder it holds. And whether a file changed since a job last read it."""

from __future__ import annotations

import difflib
import os
import pathlib
from collections.abc import Callable

from mclap.errors import UserError

_MAX_FOLDERS = 200  # Subfolders looked into per level: a folder of a hundred thousand clips stays cheap.


def _subfolders(path: pathlib.Path) -> list[pathlib.Path]:
  try:
    with os.scandir(path) as entries:
      names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
  except OSError:
    return []
  return [path / n for n in names[:_MAX_FOLDERS]]


def near(path: str | os.PathLike, is_target: Callable[[pathlib.Path], bool]) -> list[pathlib.Path]:
  """Folders one level off `path` for which `is_target` holds, nearest first: for a path that does
  not exist, siblings with a close name (a typo); for a file, its folder; for a folder, the two it
  lies in (a folder inside was named) and its sub- and sub-subfolders (a folder above was)."""
  path = pathlib.Path(path)
  if not path.exists():
    siblings = {p.name: p for p in _subfolders(path.parent)}
    candidates = [siblings[name] for name in difflib.get_close_matches(path.name, list(siblings), n=3, cutoff=0.6)]
  elif path.is_file():
    candidates = [path.parent]
  else:
    children = _subfolders(path)
    candidates = [path.parent, path.parent.parent, *children, *(g for c in children for g in _subfolders(c))]
  found = []
  for candidate in candidates:
    if candidate != path and candidate not in found and is_target(candidate):
      found.append(candidate)
  return found


def close_file(path: str | os.PathLike, pattern: str = "*") -> pathlib.Path | None:
  """The file beside a missing `path` (of those matching `pattern`) whose name is close to its
  name: what a typo or a left-out suffix meant (`best_model.pth` for `best_model.pth.tar`)."""
  path = pathlib.Path(path)
  names = [p.name for p in path.parent.glob(pattern) if p.is_file()] if path.parent.is_dir() else []
  close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
  return path.parent / close[0] if close else None


def not_found(
  path: str | os.PathLike, what: str, is_target: Callable[[pathlib.Path], bool], remedy: str, flag: str = ""
) -> str:
  """One line for a `path` that is not `what`: that it does not exist or is not one, the folders
  one level off that are (after `flag`, as the user would type it: `--input`, `--config.x=` or
  `configs/finetune.py:`),
  and `remedy` unless the path exists (then it was a slip, not a step left out)."""
  path = pathlib.Path(path)
  state = "does not exist" if not path.exists() else "is a file" if path.is_file() else f"is not {what}"
  if not (found := near(path, is_target)):
    return f"{path} {state}: {remedy}"
  options = " or ".join(f"{flag}{p}" if flag.endswith(("=", ":")) else f"{flag} {p}".strip() for p in found[:3])
  return f"{path} {state}; did you mean {options}?" + (f" Else {remedy}" if not path.exists() else "")


def hub_snapshot(path: str | os.PathLike) -> pathlib.Path:
  """The model folder a Hugging Face hub cache folder (`models--org--name`, as `huggingface-cli
  download` leaves it without `--local-dir`) holds: the snapshot its `refs/main` names, or its only
  one. Any other path is itself."""
  path = pathlib.Path(path)
  snapshots = path / "snapshots"
  if not snapshots.is_dir():
    return path
  ref = path / "refs" / "main"
  if ref.is_file() and (named := snapshots / ref.read_text().strip()).is_dir():
    return named
  found = _subfolders(snapshots)
  return found[0] if len(found) == 1 else path


def model_file(directory: str | os.PathLike, name: str, remedy: str, flag: str = "") -> pathlib.Path:
  """The file `name` of a model folder (a hub cache folder stands for its snapshot); else a
  one-line error naming a folder one level off that has it, or `remedy`."""
  folder = hub_snapshot(directory)
  if (folder / name).is_file():
    return folder / name
  has_it = lambda p: (hub_snapshot(p) / name).is_file()  # noqa: E731
  raise UserError(not_found(folder, f"a folder with {name}", has_it, remedy, flag))


def check_not_file(path: pathlib.Path, flag: str, is_target: Callable[[pathlib.Path], bool] = lambda p: False) -> None:
  """Refuses `path`, a folder a job writes into, when it names a file (a shard or config.json of
  the folder meant, or any file): one line, naming its folder when that is a folder the job writes
  (`is_target`), instead of the traceback of making a folder there."""
  if path.exists() and not path.is_dir():
    hint = f" (did you mean {flag} {path.parent}?)" if is_target(path.parent) else ""
    raise UserError(f"{flag} {path} is a file, not a folder{hint}")


def other_names(folder: pathlib.Path, is_own: Callable[[str], bool]) -> list[str]:
  """The names in `folder` (if it is one) that a job's own files do not have (`is_own`), hidden
  ones aside: a folder of someone else's files, which a job must not write into."""
  names = (p.name for p in folder.iterdir()) if folder.is_dir() else ()
  return sorted(n for n in names if not (n.startswith(".") or is_own(n)))


def few(names: list[str], shown: int = 3) -> str:
  """The first `shown` of `names`, and "..." for the rest: what a folder holds, in one line."""
  return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def file_state(path: str | os.PathLike) -> list[int] | None:
  """(size, modification time) of a file, None if there is none: jobs that resume keep it beside
  what they made of the file, and redo it when the file was replaced (downloaded again, edited)."""
  try:
    info = os.stat(path) if path else None
  except OSError:
    return None
  return [info.st_size, info.st_mtime_ns] if info else None
