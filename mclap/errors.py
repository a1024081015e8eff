"""Errors caused by the user's input or settings. Jobs print them as one line and exit non-zero;
anything else is a bug and keeps its traceback."""

import dataclasses


class UserError(ValueError):
  """Base of the errors whose message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
  """A library error's message as one line of a `UserError`: its first line, without
  TensorStore's dump of its whole spec, its middle cut if long (storage errors put the path first
  and the operating system's reason, "No space left on device", last)."""
  line = (str(error).strip().splitlines() or [type(error).__name__])[0].split(" See full TensorStore details")[0]
  return line if len(line) <= 300 else f"{line[:150]} … {line[-150:]}"


class ConfigError(UserError):
  """A config file, key or value is wrong, or does not fit the data or the devices."""


@dataclasses.dataclass
class ItemError(Exception):
  """Why one input (a file, a waveform, an array) cannot be used: a short `reason`, which batch
  jobs group their rejects by, and `detail`. Batch jobs skip such an item and go on."""

  reason: str
  detail: str = ""

  def __str__(self) -> str:
    return f"{self.reason}: {self.detail}" if self.detail else self.reason
