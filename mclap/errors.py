"""Errors caused by the user's input or settings. Jobs print them as one line and exit non-zero;
anything else is a bug and keeps its traceback."""


class UserError(ValueError):
  """Base of the errors whose message says what was wrong and what to do."""


class ConfigError(UserError):
  """A config file, key or value is wrong, or does not fit the data or the devices."""
