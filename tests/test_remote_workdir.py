"""A gs:// workdir end to end: train → SIGTERM → resume → sample → eval through `launch.py`, against a
GCS emulator on localhost (tests/gcs_emulator.py), with nothing written to the local disk."""

import os
import re
import signal
import subprocess
import sys

import pytest
from etils import epath
from etils.epath import gpath

from cfg import files
from tests import gcs_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = f'gs://{gcs_emulator.BUCKET}/runs/smoke'
FEATURE_NET = f'gs://{gcs_emulator.BUCKET}/feature_net'
FLAGS = ('--config.train.log_every=1', '--config.train.preview_every=2', '--config.train.checkpoint_every=1000',
         '--config.sampling.num_samples=20', '--config.sampling.batch_size=10')


def _launch(cwd, env, *flags):
  return subprocess.Popen(
      [sys.executable, '-u', os.path.join(ROOT, 'launch.py'), f'--config={ROOT}/configs/smoke.py',
       f'--workdir={WORKDIR}', *FLAGS, *flags],
      cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, f'{process.args}\n{out}\n{err[-4000:]}'
  return out


def _local_files(folder, skip=('.git', '.venv', '__pycache__')):
  found = []
  for top, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if d not in skip]
    found += [os.path.join(top, name) for name in dirs + names]
  return sorted(found)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """The launch.py outputs of each stage, with the emulator still up for the checks."""
  cwd = str(tmp_path_factory.mktemp('cwd'))  # every launch runs here: it must stay empty
  before = _local_files(ROOT)
  with gcs_emulator.running() as port, pytest.MonkeyPatch.context() as patch:
    env = dict(os.environ, PYTHONPATH=ROOT, **gcs_emulator.environment(port))
    for name, value in gcs_emulator.environment(port).items():
      patch.setenv(name, value)
    patch.setattr(gpath, '_is_tf_installed', lambda: False)  # cached at first use in this process
    source = os.path.join(ROOT, 'experiments/fashion_mnist/feature_net')
    files.copy_tree(source, FEATURE_NET)
    for cache in epath.Path(FEATURE_NET).glob('reference_*'):  # eval must make its own, in the bucket
      cache.unlink()

    training = _launch(cwd, env, '--config.train.num_steps=1000')
    lines = ''
    while 'step 3/' not in lines:
      line = training.stdout.readline()
      assert line, f'training ended before step 3:\n{lines}\n{training.communicate()}'
      lines += line
    training.send_signal(signal.SIGTERM)
    outputs = {'train': lines + _finish(training)}
    stopped = int(re.search(r'SIGTERM: saved the checkpoint at step (\d+)', outputs['train']).group(1))
    outputs['resume'] = _finish(_launch(cwd, env, f'--config.train.num_steps={stopped + 2}'))
    outputs['sample'] = _finish(_launch(cwd, env, '--config.mode=sample'))
    outputs['eval'] = _finish(_launch(cwd, env, '--config.mode=eval', f'--config.eval.feature_net_dir={FEATURE_NET}'))
    listing = sorted(str(p)[len(WORKDIR) + 1:] for p in files.files_under(WORKDIR))
    results = epath.Path(WORKDIR).glob('eval/*/results.json')
    yield dict(outputs=outputs, stopped=stopped, listing=listing, results=[p.read_text() for p in results],
               feature_net=sorted(p.name for p in epath.Path(FEATURE_NET).iterdir()),
               local=_local_files(cwd), new_in_repository=sorted(set(_local_files(ROOT)) - set(before)))


def test_training_stops_on_sigterm_and_resumes_from_the_bucket(run):
  stopped = run['stopped']
  assert f'resuming from the checkpoint at step {stopped}' in run['outputs']['resume']
  checkpoints = {name.split('/')[1] for name in run['listing'] if name.startswith('checkpoints/')}
  assert checkpoints == {str(stopped), str(stopped + 2)}, run['listing']
  assert any(re.fullmatch(r'tensorboard/events\.out\.tfevents\..*', name) for name in run['listing'])
  assert 'previews/step00000002_w0.png' in run['listing']


def test_sample_and_eval_write_their_files_to_the_bucket(run):
  names = run['listing']
  for pattern in (r'samples/[^/]+/w0\.npz', r'samples/[^/]+/w1\.png', r'samples/[^/]+/nfe\.json',
                  r'eval/[^/]+/round_00001\.npz', r'eval/[^/]+/manifest\.json', r'eval/[^/]+/table\.md',
                  r'eval/[^/]+/tradeoff\.png', r'eval/[^/]+/samples_w1\.npz'):
    assert any(re.fullmatch(pattern, name) for name in names), (pattern, names)
  (results,) = run['results']
  assert '"fd_fmnist"' in results and 'NaN' not in results
  assert any(name.startswith('reference_fashion_mnist_test') for name in run['feature_net'])  # cache there too


def test_nothing_is_written_locally(run):
  assert run['local'] == []  # the working directory of every launch
  assert run['new_in_repository'] == [], run['new_in_repository']  # e.g. no folder named 'gs:'
