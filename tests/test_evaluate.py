"""Evaluation rounds and sweeps: a killed evaluation resumes to the same numbers; tables and plots."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cfg import evaluate, sweep, train
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_FLAGS = ('--config.sampling.num_samples=40', '--config.sampling.batch_size=10')


def _eval_config():
  config = smoke.get_config()
  config.mode = 'eval'
  config.train.preview_every = 0
  config.sampling.update(dict(num_samples=40, batch_size=10))
  config.eval.feature_net_dir = os.path.join(ROOT, 'experiments/fashion_mnist/feature_net')
  return config


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(_eval_config(), workdir)
  return workdir


def test_killed_evaluation_resumes_to_the_same_numbers(trained_workdir, tmp_path):
  clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
  shutil.copytree(trained_workdir, clean)
  shutil.copytree(trained_workdir, killed)
  process = subprocess.Popen(
      [sys.executable, 'launch.py', '--config=configs/smoke.py', f'--workdir={killed}', '--config.mode=eval',
       f'--config.eval.feature_net_dir={_eval_config().eval.feature_net_dir}', *EVAL_FLAGS],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not glob.glob(os.path.join(killed, 'eval', '*', 'round_00000.npz')) and time.time() < deadline:
    assert process.poll() is None, 'the evaluation ended before it could be killed'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = glob.glob(os.path.join(killed, 'eval', '*', 'round_*.npz'))
  assert 1 <= len(finished) < 4, finished  # killed between rounds, not after the last

  resumed_rows = evaluate.run(_eval_config(), killed)
  clean_rows = evaluate.run(_eval_config(), clean)
  assert resumed_rows == clean_rows
  for name in ('fd_fmnist', 'is_fmnist', 'precision', 'recall', 'class_accuracy'):
    assert all(np.isfinite(row[name]) for row in clean_rows), name
  (folder,) = glob.glob(os.path.join(clean, 'eval', '*'))
  for name in ('results.json', 'table.md', 'table.csv', 'tradeoff.png', 'samples_w0.png', 'samples_w1.npz'):
    assert os.path.exists(os.path.join(folder, name)), name
  with open(os.path.join(folder, 'results.json')) as f:
    assert json.load(f)['rows'] == clean_rows


def test_sweep_plan_names_workdirs_and_counts_cost(tmp_path):
  config = smoke.get_config()
  planned = sweep.plan(config, sweep.Sweep('diffusion.p_uncond', (0.1, 0.5)), str(tmp_path))
  assert [os.path.basename(job.workdir) for job, _, _ in planned] == [
      'diffusion.p_uncond=0.1', 'diffusion.p_uncond=0.5']
  assert [c.diffusion.p_uncond for _, c, _ in planned] == [0.1, 0.5]
  _, _, cost = planned[0]
  weights = len(config.guidance.weights)
  # ddim T = 4: 3 guided levels of a 2B call, 6 evaluations per image (tests/test_sweep.py has the rest).
  assert cost['image_nfe'] == 6 * config.sampling.num_samples * weights
  assert cost['train_images'] == config.train.num_steps * config.train.batch_size

  steps = sweep.plan(config, sweep.Sweep('sampling.num_steps', (4, 8), train=False), str(tmp_path))
  assert len({job.workdir for job, _, _ in steps}) == 1  # one trained run, sampled at each T
  assert [cost['train_steps'] for _, _, cost in steps] == [config.train.num_steps, 0]


def _write_results(workdir, config, step, rows):
  """A finished evaluation of `config` at `step`, where evaluate.run would have written it."""
  folder = os.path.join(workdir, 'eval', evaluate.evaluation_tag(
      config, step, evaluate.guidance_weights(config)))
  os.makedirs(folder)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump({'info': {'step': step, 'seed': config.sampling.seed}, 'rows': rows}, f)


def _rows(fd):
  return [{'w': w, 's': 1 + w, 'fd_fmnist': fd + w, 'is_fmnist': 2 + w} for w in (0.0, 1.0)]


def test_collect_builds_the_combined_table(tmp_path):
  for p, fd in ((0.1, 5.0), (0.5, 7.0)):
    _write_results(str(tmp_path / f'diffusion.p_uncond={p}'), smoke.get_config(), 6, _rows(fd))
  out = str(tmp_path / 'table')
  rows = sweep.collect(smoke.get_config(), sweep.Sweep('diffusion.p_uncond', (0.1, 0.5)), str(tmp_path), out)
  assert rows == [{'w': 0.0, 'fd_fmnist @ 0.1': 5.0, 'is_fmnist @ 0.1': 2.0, 'fd_fmnist @ 0.5': 7.0,
                   'is_fmnist @ 0.5': 2.0},
                  {'w': 1.0, 'fd_fmnist @ 0.1': 6.0, 'is_fmnist @ 0.1': 3.0, 'fd_fmnist @ 0.5': 8.0,
                   'is_fmnist @ 0.5': 3.0}]
  assert os.path.exists(os.path.join(out, 'tradeoff.png'))
  assert '| w |' in open(os.path.join(out, 'table.md')).read()


def test_collect_takes_the_evaluation_the_config_describes(tmp_path):
  """Other seeds, sample counts or steps in the same workdir are never mixed into the table."""
  workdir = str(tmp_path / 'diffusion.p_uncond=0.1')
  config = smoke.get_config()
  other_seed, more_samples = smoke.get_config(), smoke.get_config()
  other_seed.sampling.seed += 1
  more_samples.sampling.num_samples *= 4
  _write_results(workdir, config, 4, _rows(10.0))
  _write_results(workdir, config, 8, _rows(20.0))
  _write_results(workdir, other_seed, 8, _rows(30.0))
  _write_results(workdir, more_samples, 8, _rows(40.0))
  _write_results(workdir, more_samples, 12, _rows(50.0))
  assert sweep.find_results(workdir, config)['rows'] == _rows(20.0)  # newest step of this config
  assert sweep.find_results(workdir, other_seed)['rows'] == _rows(30.0)
  assert sweep.find_results(workdir, more_samples)['rows'] == _rows(50.0)
  config.eval.checkpoint_step = 4
  assert sweep.find_results(workdir, config)['rows'] == _rows(10.0)
  config.eval.checkpoint_step = 12
  assert sweep.find_results(workdir, config) is None
  with pytest.raises(FileNotFoundError, match='no finished evaluations'):
    sweep.collect(config, sweep.Sweep('diffusion.p_uncond', (0.1,)), str(tmp_path),
                  str(tmp_path / 'table'))
