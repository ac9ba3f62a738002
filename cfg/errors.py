"""The errors that mean "the input is wrong" (reported as one message, no traceback) versus bugs."""

from cfg.checkpoints import CheckpointMismatchError, NoReadableCheckpointError
from cfg.config_checks import ConfigError
from cfg.data import DataNotFoundError

USER_ERRORS = (ConfigError, CheckpointMismatchError, NoReadableCheckpointError, DataNotFoundError,
               FileNotFoundError, PermissionError, FloatingPointError)
