"""The errors that mean "the input is wrong": launch.py reports them as one line, without a traceback.

Everything else — builtin exceptions included — is a bug and keeps its traceback. Each class names what
the user has to change; the message says how.
"""

from cfg.config_checks import ConfigError


class UserError(Exception):
  """Bad input (config, files, workdir, a diverging run): one message, nothing on disk lost."""


class MissingInputError(UserError, FileNotFoundError):
  """A file, folder or checkpoint the run needs is not there (the message names it and how to make it)."""


class WorkdirError(UserError):
  """The workdir cannot hold the run's files (not writable, below a regular file)."""


class TrainingDivergedError(UserError):
  """A non-finite loss, gradient or state with `train.on_nonfinite=stop`; the last checkpoint is intact."""


class CheckpointNotSavedError(UserError):
  """Orbax refused a save (a newer step is already there: another run writing the same workdir?)."""


class ResumeMismatchError(UserError):
  """Resuming with a config whose data order differs from the one the checkpoint was trained with."""


class ProcessZeroUserError(UserError):
  """Process 0 found bad input while deciding for all processes (its message says what)."""


USER_ERRORS = (UserError, ConfigError)
