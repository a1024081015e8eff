"""Errors caused by the user's input or settings. Jobs print them as one line and exit non-zero;
anything else is a bug and keeps its traceback."""

import dataclasses
import errno
import os

# What a user acts on when storage fails: kept when a long message is cut.
_OS_REASONS = tuple(
  os.strerror(code)
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.ENOENT, errno.EIO)
)


class UserError(ValueError):
  """Base of the errors whose message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
  """A library error's message as one line of a `UserError`: its first line, without
  TensorStore's dump of its whole spec, its middle cut if long, but never the operating system's
  reason ("No space left on device"), which storage errors put last or, followed by more
  context, in the middle."""
  line = (str(error).strip().splitlines() or [type(error).__name__])[0].split(" See full TensorStore details")[0]
  if len(line) <= 300:
    return line
  head, tail = line[:150], line[-150:]
  lost = [reason for reason in _OS_REASONS if reason in line and reason not in head and reason not in tail]
  return f"{head} … {lost[0]} … {tail}" if lost else f"{head} … {tail}"


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
