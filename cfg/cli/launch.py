"""Runs one config: python launch.py --config=configs/<name>.py --workdir=DIR [--config.field=value …]

Modes (--config.mode): train (default; resumes from the workdir's latest checkpoint), sample, eval, sweep.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from cfg.config_checks import ConfigError, check_config
from cfg.errors import USER_ERRORS

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/<name>.py file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and samples.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 … num_processes − 1.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize (auto on TPU/SLURM).')
_DEBUG = flags.DEFINE_bool('debug', False, 'Re-raise input errors with their traceback instead of one line.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    check_config(config)
  except ConfigError as error:
    if _DEBUG.value:
      raise
    sys.exit(f'config error: {error}')
  if _DISTRIBUTED.value or _COORDINATOR.value:
    from cfg import parallel
    parallel.initialize_distributed(coordinator_address=_COORDINATOR.value,
                                    num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  try:
    if config.mode == 'train':
      from cfg import train
      train.train_and_evaluate(config, _WORKDIR.value)
    elif config.mode == 'sample':
      from cfg import sample
      sample.run(config, _WORKDIR.value)
    else:
      from cfg import evaluate
      evaluate.run(config, _WORKDIR.value)
  except USER_ERRORS as error:
    if _DEBUG.value:
      raise
    sys.exit(f'error: {error}')


def _config_argument(argv):
  """The value of --config (`path` or `path:arg`) in argv, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_config_argument(argv):
  """Loads --config and checks each --config.<field> override names a field, before absl parses them:
  the one message says which file or field is wrong (ml_collections' own errors are tracebacks)."""
  argument = _config_argument(argv)
  if argument is None:
    return None  # absl reports the missing required flag
  path, *preset = argument.split(':', 1)
  if not os.path.isfile(path):
    return f'config error: --config={argument}: no such file {path!r}; pass a configs/<name>.py file.'
  try:
    spec = importlib.util.spec_from_file_location('_checked_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*preset)
  except Exception as error:  # pylint: disable=broad-except  # anything in the user's file
    if any(arg in ('--debug', '--debug=true', '--debug=True') for arg in argv):
      raise
    return (f'config error: --config={argument} could not be loaded: {type(error).__name__}: {error} '
            '(rerun with --debug for the traceback).')
  for arg in argv:
    if arg.startswith(('--config.', '--noconfig.')):
      field = arg.split('=', 1)[0].split('.', 1)[1]
      try:
        config_path.get_value(field, config)
      except (AttributeError, KeyError):
        return (f'config error: unknown config field {field!r} in {arg}; an override must name a field '
                f'that {path} defines (see configs/default.py).')
  return None


def run():
  problem = _check_config_argument(sys.argv)
  if problem:
    sys.exit(problem)
  app.run(main)


if __name__ == '__main__':
  run()
