"""Runs one config: python launch.py --config=configs/<name>.py --workdir=DIR [--config.field=value …]

Modes (--config.mode): train (default; resumes from the workdir's latest checkpoint), sample, eval, sweep.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cfg.config_checks import ConfigError, check_config
from cfg.errors import USER_ERRORS

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/<name>.py file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and samples.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 … num_processes − 1.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize (auto on TPU/SLURM).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    check_config(config)
  except ConfigError as error:
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
    sys.exit(f'error: {error}')


def _run():
  try:
    app.run(main)
  except AttributeError as error:  # ml_collections' message for --config.<unknown field>=…
    sys.exit(f'config error: unknown config field {error} in {sys.argv[1:]}; an override must name a '
             'field that the config file defines (see configs/default.py).')


if __name__ == '__main__':
  _run()
