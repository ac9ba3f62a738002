"""Runs, dry-runs or collects a sweep defined by a config's `sweeps()` (see cfg/sweep.py).

python sweep.py --config=configs/fashion_mnist.py --sweep=p_uncond --root=runs/fm_sweep [--dry_run|--collect]
"""

import importlib.util
import signal
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from cfg import sweep as sweeps_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/<name>.py file with sweeps().')
_SWEEP = flags.DEFINE_string('sweep', None, 'Name of a sweep in the config file\'s sweeps().')
_ROOT = flags.DEFINE_string('root', None, 'Folder holding one workdir per job.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print every job, its commands and its cost; run nothing.')
_COLLECT = flags.DEFINE_bool('collect', False, 'Only build the combined table and plot of finished jobs.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the combined table and plot (default <root>/<sweep>).')
flags.mark_flags_as_required(['config', 'sweep', 'root'])


def load_sweeps(config_path):
  path = config_path.split(':')[0]
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'sweeps'):
    sys.exit(f'{path} defines no sweeps(); add one (see configs/fashion_mnist.py).')
  return module.sweeps()


def run_job(command):
  """Runs one job's command to its end. SIGTERM or SIGINT to the sweep reach the job as SIGTERM (training
  saves a checkpoint and exits, as on preemption; an evaluation stops with its finished rounds on disk)
  instead of leaving it running alone or killing it; returns True when that happened, so the sweep
  stops after the job. A job that fails on its own raises CalledProcessError."""
  job = subprocess.Popen(command)
  stopped = []

  def stop(signum, _):
    stopped.append(signum)
    job.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    returncode = job.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  if returncode and not stopped:
    raise subprocess.CalledProcessError(returncode, command)
  return bool(stopped)


def main(_):
  config_path = config_flags.get_config_filename(flags.FLAGS['config'])
  available = load_sweeps(config_path)
  if _SWEEP.value not in available:
    sys.exit(f'unknown sweep {_SWEEP.value!r}; {config_path} defines {sorted(available)}.')
  # Overrides given to this command (--config.x=…) go to every job, before the sweep's own.
  command_line = tuple(config_flags.get_override_values(flags.FLAGS['config']).items())
  sweep = available[_SWEEP.value]
  planned = sweeps_lib.plan(_CONFIG.value, sweep, _ROOT.value, command_line)
  if _DRY_RUN.value:
    print(sweeps_lib.format_plan(planned, config_path))
    return
  if not _COLLECT.value:
    for job, mode, command in sweeps_lib.commands(planned, config_path, python=sys.executable):
      print(f'== {job.name}: {mode}', flush=True)
      if run_job(command):
        print(f'== stopped by a signal during {job.name}: {mode} (it kept what it had finished); run the same '
              'command again to continue from there.', flush=True)
        return
  sweeps_lib.collect(_CONFIG.value, sweep, _ROOT.value, _OUT.value or f'{_ROOT.value}/{_SWEEP.value}',
                     command_line)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
