"""The errors that mean "the input is wrong" (reported as one message, no traceback) versus bugs."""

from cfg.checkpoints import CheckpointMismatchError
from cfg.config_checks import ConfigError
from cfg.data import DataNotFoundError

USER_ERRORS = (ConfigError, CheckpointMismatchError, DataNotFoundError, FileNotFoundError,
               PermissionError, FloatingPointError)
