"""Command-line plumbing shared by the `python -m mclap.*` jobs.

Configs are big_vision-style Python files (`--config configs/muscall.py:demo`) whose keys are
overridden with `--config.train.batch_size=16`. `config_flags` turns an unknown key into a long
traceback; `run` checks every override against the config first and stops with one line naming
the key and the closest valid ones.
"""

from __future__ import annotations

import ast
import difflib
import logging as std_logging
import os
import pathlib
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mclap import parallel
from mclap.config_files import CONFIG_FILE, load_config
from mclap.errors import ConfigError, UserError

__all__ = ["ConfigError", "define_config_flag", "load_config", "run"]


class _ConfigFileParser(flags.ArgumentParser):
  """`config_flags`' parser of config files that also reads the `config.json` of a training
  workdir (`load_config`)."""

  def __init__(self, files: flags.ArgumentParser):
    self._files = files

  def parse(self, path: str) -> ml_collections.ConfigDict:
    if not path.endswith(".json"):
      return self._files.parse(path)
    config = load_config(path)
    config.lock()
    return config

  def flag_type(self) -> str:
    return self._files.flag_type()


def define_config_flag(name: str = "config") -> flags.FlagHolder:
  holder = config_flags.DEFINE_config_file(
    name,
    None,
    f"Config file, optionally with an argument: configs/muscall.py:demo; or a training workdir's config.json. "
    f"Override any key with --{name}.a.b=value.",
    lock_config=True,
  )
  flags.FLAGS[name].parser = _ConfigFileParser(flags.FLAGS[name].parser)
  return holder


def check_override(config: ml_collections.ConfigDict, dotted_key: str) -> None:
  """Raises ConfigError if `dotted_key` (e.g. 'train.batch_size') is not a key of `config`."""
  node, walked, parts = config, [], dotted_key.split(".")
  for n, part in enumerate(parts):
    keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    if part not in keys:
      where = ".".join(walked) or "the top level"
      close = [".".join(walked + [c]) for c in difflib.get_close_matches(part, keys, n=3)]
      # The key under another parent (`train.lr` for `optim.lr`, `data.n_mels` for `data.mel.n_mels`).
      tail = ".".join(parts[n:])
      elsewhere = [k for k in _dotted_keys(config) if k.endswith(f".{tail}") or k == tail]
      hint = f"did you mean {', '.join(map(repr, [*elsewhere, *close][:3]))}? " if elsewhere or close else ""
      raise ConfigError(
        f"unknown config key '{dotted_key}': '{part}' is not in {where}; {hint}"
        f"valid keys there: {', '.join(sorted(keys))}"
      )
    node = node[part]
    walked.append(part)


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every key of `config`, nested ones as `a.b.c`."""
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys += _dotted_keys(value, f"{prefix}{key}.")
  return keys


def _node(config: ml_collections.ConfigDict, dotted_key: str):
  for part in dotted_key.split("."):
    config = config[part]
  return config


def _parses(parse: Callable[[str], object], value: str) -> bool:
  try:
    parse(value.strip())
  except (ValueError, SyntaxError):
    return False
  return True


def _bool(value: str) -> bool:
  if value.lower() not in ("true", "false", "1", "0"):
    raise ValueError(value)
  return value.lower() in ("true", "1")


def _sequence(value: str) -> tuple | list:
  parsed = ast.literal_eval(value)
  if not isinstance(parsed, (tuple, list)):
    raise ValueError(value)
  return parsed


# What a flag value must look like for a default of each type (ml_collections converts it so).
_VALUE_KINDS = (
  (bool, _bool, "true or false"),
  (int, int, "an integer"),
  (float, float, "a number"),
  ((tuple, list), _sequence, "a tuple such as (1, 2)"),
)


def check_override_value(config: ml_collections.ConfigDict, dotted_key: str, value: str, flag: str = "config") -> None:
  """Raises ConfigError if `value` cannot become the type of the key's default, saying what can."""
  default = _node(config, dotted_key)
  for types, parse, kind in _VALUE_KINDS:
    if isinstance(default, types):
      if not _parses(parse, value):
        raise ConfigError(
          f"--{flag}.{dotted_key}={value}: expected {kind} (the default is {default!r}); "
          f"write e.g. --{flag}.{dotted_key}={default!r}"
        )
      return


def _value(args: Sequence[str], name: str) -> str | None:
  """The value `--name X` or `--name=X` gives in `args` (the last one), or None."""
  value = None
  for i, arg in enumerate(args):
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(args):
      value = args[i + 1]
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value


def check_config_args(
  argv: Sequence[str], flag: str = "config", default: Callable[[], ml_collections.ConfigDict] | None = None
) -> tuple[dict[str, ml_collections.ConfigDict], list[int]]:
  """Validates `--config` and every `--config.key=value` in argv before absl parses them; for a
  flag that holds a fixed config dict (`default`, e.g. prepare's `--mel`), its `--flag.key=value`s.

  Returns the new evaluator entries that overrides define (`--config.evals.gtzan.kind=zero_shot
  --config.evals.gtzan.dir=D`; see `new_eval_entry`) and the positions in argv of their arguments,
  which absl must not see (the config is locked to its keys).
  """
  overrides = []
  args = list(argv[1:])
  spec = _value(args, flag)
  for i, arg in enumerate(args):
    if arg.startswith(f"--{flag}."):
      key, has_value, value = arg[len(flag) + 3 :].partition("=")
      if has_value:
        overrides.append((key, value, [i + 1]))
      else:
        overrides.append((key, args[i + 1] if i + 1 < len(args) else "", [i + 1, i + 2]))
  if spec is None and default is None:
    if overrides:
      workdir = _value(args, "workdir")
      own = pathlib.Path(workdir or ".") / CONFIG_FILE
      hint = f": to change {workdir}'s own config, pass --{flag} {own}" if workdir and own.is_file() else ""
      raise ConfigError(f"--{flag}.* overrides given without --{flag}=FILE{hint}")
    return {}, []
  config = load_config(spec) if spec is not None else default()
  entries: dict[str, list[tuple[str, str]]] = {}
  positions = []
  for key, value, where in overrides:
    evals, _, rest = key.partition(".")
    name, _, setting = rest.partition(".")
    if evals == "evals" and setting and "evals" in config and name not in config.evals:
      entries.setdefault(name, []).append((setting, value))
      positions += where
      continue
    check_override(config, key)  # Booleans are set as --config.a.flag=false (no --noflag form).
    check_override_value(config, key, value, flag)
  return {name: new_eval_entry(config, name, values) for name, values in entries.items()}, positions


def new_eval_entry(config: ml_collections.ConfigDict, name: str, values: list[tuple[str, str]]):
  """An evaluator entry `evals.<name>` that the config lacks, from `--config.evals.<name>.*` flags:
  `kind` picks the evaluator, whose settings start from the config's entry of that kind (so
  `--config.evals.gtzan.kind=zero_shot --config.evals.gtzan.dir=data/gtzan` evaluates another corpus
  beside the training corpus's `zero_shot`, into `gtzan.json`)."""
  kinds = {settings.get("kind", entry): entry for entry, settings in config.evals.items()}
  kind = dict(values).get("kind", "")
  if kind not in kinds:
    raise ConfigError(
      f"--config.evals.{name}.* adds an evaluator entry: give it --config.evals.{name}.kind=KIND, KIND one of "
      f"{sorted(kinds)} (its other settings start from that entry's)"
    )
  entry = ml_collections.ConfigDict(config.evals[kinds[kind]].to_dict())
  entry.kind = kind
  for key, value in values:
    if key != "kind":
      check_override(entry, key)
      check_override_value(entry, key, value, f"config.evals.{name}")
      entry[key] = _typed(entry[key], value)
  return entry


def _typed(default: object, value: str) -> object:
  """A flag's text as the type of the key's default (as `config_flags` converts it)."""
  for types, parse, _ in _VALUE_KINDS:
    if isinstance(default, types):
      parsed = parse(value.strip())
      return tuple(parsed) if isinstance(default, tuple) else parsed
  return value


class _Stderr:
  """`sys.stderr` that knows whether its last write ended a line. Library threads (Orbax's
  writers after a failed save, its reads of a damaged bundle left pending) print tracebacks there
  piece by piece, a line's indentation before its text, and go on as the interpreter stops: the
  job's verdict must land neither after such a piece nor before the rest."""

  def __init__(self, stream):
    self._stream = stream
    self._lock = threading.Lock()
    self._mid_line = False

  def write(self, text: str) -> int:
    with self._lock:
      if text:
        self._mid_line = not text.endswith("\n")
      return self._stream.write(text)

  def write_verdict(self, line: str) -> None:
    """Writes `line` at the start of a line, in one write no other thread's can split, as the
    last: what is written to the stream's descriptor afterwards goes nowhere."""
    with self._lock:
      text = "\n" * self._mid_line + line + "\n"
      self._stream.flush()
      try:
        fd = self._stream.fileno()
      except (AttributeError, OSError, ValueError):  # Not a file (a test's buffer): nothing runs on after it.
        self._stream.write(text)
        return
      verdict = os.dup(fd)
      os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # Threads, and the C++ below them, write to the descriptor.
      os.write(verdict, text.encode())

  def __getattr__(self, name: str):
    return getattr(self._stream, name)


def fail(error: UserError) -> NoReturn:
  """Ends the job with its one-line verdict, the last line it writes (`_Stderr.write_verdict`)."""
  if isinstance(sys.stderr, _Stderr):
    sys.stderr.write_verdict(f"error: {error}")
    sys.exit(1)
  sys.exit(f"error: {error}")


def define_config_dict(name: str, default: Callable[[], ml_collections.ConfigDict], help_text: str):
  """A config-dict flag (`--mel.n_mels=64`). `config_flags` reads its overrides from the command
  line as the flag is defined and fails with a traceback on an unknown key; they are checked
  first, so that a mistake stops the job in one line."""
  try:
    check_config_args(sys.argv, name, default)
  except UserError as e:
    fail(e)
  return config_flags.DEFINE_config_dict(name, default(), help_text)


def default_compilation_cache() -> str:
  """Where compiled programs are kept between runs: JAX's own setting when the environment gives
  one, else the user's cache directory (XDG), as other tools there keep theirs."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  return str(pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "mclap" / "jax")


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory` ('': nowhere), so that a second start of the same
  config (a resume, an eval after training) loads its step instead of compiling it again. Programs
  that compile in under a second are not worth a file (JAX's default threshold)."""
  jax.config.update("jax_compilation_cache_dir", directory or None)


def _expand_home(arg: str) -> str:
  """`--flag=~/x` as `--flag=$HOME/x`: the shell expands `~` in `--flag ~/x` but not after `=`,
  and a literal `~` folder would be made in the working directory."""
  name, eq, value = arg.partition("=")
  return f"{name}={os.path.expanduser(value)}" if arg.startswith("-") and eq and value.startswith("~") else arg


def _quiet_closed_loops() -> None:
  """Orbax reads arrays on an asyncio loop that it closes as soon as one read fails (a damaged
  bundle): each read still in flight then prints that the loop is closed, and asyncio logs the
  gathered error as never retrieved, dozens of tracebacks around the job's one-line verdict.
  Those unraisable errors are dropped (every other is printed as before), and asyncio's log, which
  only Orbax's loops write to in these jobs, is silenced."""
  printed = sys.unraisablehook

  def hook(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      printed(unraisable)

  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run` that reports bad config files, keys and other `UserError`s, and an interrupt, in one
  line, and keeps compiled programs in `--compilation_cache`."""
  flags.DEFINE_string(
    "compilation_cache",
    default_compilation_cache(),
    "Directory where compiled programs are kept between runs (a re-run skips most of its compilation); "
    "empty to keep none.",
  )
  new_entries = {}

  def parse(argv):
    argv = [_expand_home(arg) for arg in argv]
    try:
      entries, positions = check_config_args(argv)
    except UserError as e:
      fail(e)
    new_entries.update(entries)
    kept = [a for i, a in enumerate(argv) if i not in positions]
    sys.argv = kept  # config_flags reads its overrides from sys.argv itself.
    return app.parse_flags_with_usage(kept)

  def guarded(argv):
    sys.stderr = _Stderr(sys.stderr)
    _quiet_closed_loops()
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and Grain are chatty at INFO.
    if new_entries:
      config = flags.FLAGS["config"].value
      with config.unlocked():
        config.evals.update(new_entries)
    try:
      use_compilation_cache(flags.FLAGS.compilation_cache)
      parallel.initialize_distributed()
      main(argv)
    except UserError as e:
      fail(e)
    except KeyboardInterrupt:  # Jobs that keep work on an interrupt say so themselves (train, prepare, embed).
      sys.stderr.write_verdict("interrupted")
      sys.exit(130)

  app.run(guarded, flags_parser=parse)
