"""Preemption of launch.py with real signals: SIGTERM saves a checkpoint and exits 0; kill -9 at any moment,
during a checkpoint write too, leaves a workdir that resumes from its newest complete checkpoint. Resumed
runs end bitwise equal to an uninterrupted one (same program, same device count, CPU)."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from cfg import train
from tests.tb_events import read_scalars
from tests.smoke_config import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 10
TMP_SUFFIX = '.orbax-checkpoint-tmp'




@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """(final state, {step: loss}) of NUM_STEPS steps in one go."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  state = train.train_and_evaluate(smoke_config(num_steps=NUM_STEPS, checkpoint_every=1000), workdir)
  return jax.device_get(state), dict(read_scalars(os.path.join(workdir, 'tensorboard'))['loss'])


def _launch(workdir, log_path, **train_flags):
  flags = [f'--config.train.{k}={v}' for k, v in dict(preview_every=0, log_every=1, **train_flags).items()]
  with open(log_path, 'a') as log:
    return subprocess.Popen(
        [sys.executable, '-u', 'launch.py', '--config=configs/smoke.py', f'--workdir={workdir}', *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)


def _wait_for_step(process, step):
  """Reads the progress lines until one reports `step` or later; returns the lines read."""
  lines = []
  while True:
    line = process.stdout.readline()
    assert line, f'launch.py ended before step {step}:\n{"".join(lines)}'
    lines.append(line)
    reported = re.match(r'step (\d+)/', line)
    if reported and int(reported.group(1)) >= step:
      return lines


def _complete_steps(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


def _writes_in_progress(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return [name for name in os.listdir(folder) if TMP_SUFFIX in name] if os.path.isdir(folder) else []


def _all_logged_losses(workdir):
  """[(step, loss)] from every TensorBoard file, a step logged by a killed run and again after resuming twice."""
  pairs = []
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
    for event in EventFileLoader(path).Load():
      pairs += [(event.step, float(tensor_util.make_ndarray(v.tensor))) for v in event.summary.value
                if v.tag == 'loss']
  return pairs


def _assert_states_equal(a, b):
  for x, y in zip(jax.tree.leaves((a.step, a.params, a.ema_params, a.opt_state, a.rng)),
                  jax.tree.leaves((b.step, b.params, b.ema_params, b.opt_state, b.rng))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_exits_zero_and_resumes_bitwise(uninterrupted, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  process = _launch(workdir, tmp_path / 'stderr.txt', num_steps=1000, checkpoint_every=1000)
  _wait_for_step(process, 2)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=120)  # a hang guard only; the soak script reports the time
  assert process.returncode == 0, (out, (tmp_path / 'stderr.txt').read_text())
  saved = int(re.search(r'SIGTERM: saved the checkpoint at step (\d+)', out).group(1))
  assert 2 <= saved < NUM_STEPS and _complete_steps(workdir) == [saved]

  capsys.readouterr()
  resumed = train.train_and_evaluate(smoke_config(num_steps=NUM_STEPS, checkpoint_every=1000), workdir)
  assert f'resuming from the checkpoint at step {saved}' in capsys.readouterr().out
  state, losses = uninterrupted
  _assert_states_equal(resumed, state)
  resumed_losses = dict(read_scalars(os.path.join(workdir, 'tensorboard'))['loss'])
  assert resumed_losses == losses  # steps 1 … saved from the killed run, the rest from the resumed one


def _kill_during_a_write(workdir, log_path):
  """Starts training and kills it -9 while a checkpoint is being written (after one is complete)."""
  process = _launch(workdir, log_path, num_steps=NUM_STEPS, checkpoint_every=1, keep_checkpoints=2)
  while not (_complete_steps(workdir) and _writes_in_progress(workdir)):
    assert process.poll() is None, open(log_path).read()
    time.sleep(0.001)
  process.kill()
  process.communicate()
  return _writes_in_progress(workdir)


def _kill_at_a_random_moment(workdir, log_path, *, delay):
  process = _launch(workdir, log_path, num_steps=NUM_STEPS, checkpoint_every=1, keep_checkpoints=2)
  lines = _wait_for_step(process, 1)
  time.sleep(delay)
  process.kill()
  process.communicate()
  return ''.join(lines)


def test_kill_9_during_a_write_and_at_a_random_moment_always_resumes(uninterrupted, tmp_path, capsys):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'stderr.txt')
  left_mid_write = _kill_during_a_write(workdir, log)
  assert left_mid_write, 'the kill was meant to land during a checkpoint write'
  newest = max(_complete_steps(workdir))
  out = _kill_at_a_random_moment(workdir, log, delay=np.random.default_rng(0).uniform(0.0, 2.0))
  assert f'resuming from the checkpoint at step {newest}' in out, out

  newest = max(_complete_steps(workdir))
  capsys.readouterr()
  resumed = train.train_and_evaluate(smoke_config(num_steps=NUM_STEPS, checkpoint_every=1000), workdir)
  assert f'resuming from the checkpoint at step {newest}' in capsys.readouterr().out
  state, losses = uninterrupted
  _assert_states_equal(resumed, state)
  logged = _all_logged_losses(workdir)
  assert {step for step, _ in logged} == set(losses)  # killed runs flushed what came before a checkpoint
  assert all(loss == losses[step] for step, loss in logged), logged
