"""Scale-out on CPU: two processes (jax.distributed, gloo) train exactly like one process with the same
devices and stop together on SIGTERM to either; checkpoints move between process and device counts;
samples do not depend on the device count."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cfg import build, parallel, sample, samplers, train, train_state
from configs import smoke
from tests import sample_on_mesh
from tests.tb_events import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = ('--config=configs/smoke.py', '--config.train.preview_every=0', '--config.train.log_every=1')


def _config(**train_overrides):
  config = smoke.get_config()
  config.train.update(dict(preview_every=0, log_every=1, **train_overrides))
  return config


def _start(workdir, *flags, num_devices=1):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  return subprocess.Popen([sys.executable, 'launch.py', *TRAIN_FLAGS, f'--workdir={workdir}', *flags],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, f'{process.args}\n{out}\n{err}'
  return out


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _losses(workdir):
  return dict(read_scalars(os.path.join(workdir, 'tensorboard'))['loss'])


def _restore(workdir, step=None):
  config = _config()
  state, checkpoints = train_state.restore_or_init(
      config, workdir, model=build.model_from_config(config),
      optimizer=build.optimizer_from_config(config.optim), mesh=parallel.data_mesh(), step=step)
  checkpoints.close()
  return jax.device_get(state)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Smoke training (global batch 16), side by side: 2 processes × 1 device until process 1 alone gets
  SIGTERM (after step 3); then 1 process × 2 devices up to the step where they stopped; 1 process × 1
  device for 6 steps (here, while the two processes run)."""
  root = tmp_path_factory.mktemp('runs')
  dirs = {name: str(root / name) for name in ('two_processes', 'two_devices', 'one_device')}
  port = _free_port()
  hosts = [_start(dirs['two_processes'], f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                  f'--process_id={i}', '--config.train.num_steps=1000', '--config.train.checkpoint_every=1000')
           for i in range(2)]
  one_device = train.train_and_evaluate(_config(), dirs['one_device'])
  before_signal = ''
  while 'step 3/' not in before_signal:
    line = hosts[0].stdout.readline()
    assert line, f'process 0 ended before step 3:\n{before_signal}\n{hosts[0].communicate()}'
    before_signal += line
  hosts[1].send_signal(signal.SIGTERM)
  outputs = [before_signal + _finish(hosts[0]), _finish(hosts[1])]
  # The reference runs exactly as far as the preemption service let the two processes go (the step
  # depends on how fast this machine is), ending with its checkpoint there.
  step = _sigterm_step(dict(host_outputs=outputs))
  _finish(_start(dirs['two_devices'], f'--config.train.num_steps={step}',
                 f'--config.train.checkpoint_every={step}', num_devices=2))
  return dict(dirs=dirs, host_outputs=outputs, one_device_state=jax.device_get(one_device))


def _sigterm_step(runs):
  return int(re.search(r'SIGTERM: saved the checkpoint at step (\d+)', runs['host_outputs'][0]).group(1))


def test_sigterm_to_one_process_stops_all_at_one_step_with_a_checkpoint(runs):
  """Both exited 0 (see _finish); JAX's preemption service chose the step, after the one reported."""
  step = _sigterm_step(runs)
  assert 4 <= step < 1000, step  # after the step reported before the signal, well before num_steps
  assert os.listdir(os.path.join(runs['dirs']['two_processes'], 'checkpoints')) == [str(step)]


def test_two_processes_give_the_losses_of_one_process(runs):
  dirs, step = runs['dirs'], _sigterm_step(runs)
  two_processes, two_devices = _losses(dirs['two_processes']), _losses(dirs['two_devices'])
  assert sorted(two_processes) == list(range(1, step + 1))
  assert two_processes == {s: two_devices[s] for s in two_processes}  # bitwise: same program, same devices
  one_device = _losses(dirs['one_device'])
  steps = sorted(set(one_device) & set(two_processes))
  # Not bitwise against 1 device: the batch mean is summed in another order (~1e-7 apart).
  np.testing.assert_allclose([two_processes[s] for s in steps], [one_device[s] for s in steps], rtol=1e-5)


def test_only_process_zero_writes_tensorboard_and_progress(runs):
  assert len(glob.glob(os.path.join(runs['dirs']['two_processes'], 'tensorboard', 'events.*'))) == 1
  process_0, process_1 = runs['host_outputs']
  assert 'step 3/1000' in process_0 and 'step ' not in process_1 and 'SIGTERM' not in process_1


def test_two_process_checkpoint_restores_and_continues_in_one_process(runs, tmp_path, capsys):
  dirs, step = runs['dirs'], _sigterm_step(runs)
  from_two_processes = _restore(dirs['two_processes'])
  assert int(from_two_processes.step) == step
  for a, b in zip(jax.tree.leaves(from_two_processes), jax.tree.leaves(_restore(dirs['two_devices'], step))):
    np.testing.assert_array_equal(a, b)

  workdir = str(tmp_path / 'continued')
  shutil.copytree(dirs['two_processes'], workdir)
  capsys.readouterr()
  continued = train.train_and_evaluate(_config(num_steps=step + 2), workdir)
  assert f'resuming from the checkpoint at step {step}' in capsys.readouterr().out
  assert int(continued.step) == step + 2 and sorted(_losses(workdir)) == list(range(1, step + 3))


def _only_checkpoint(source, step, destination):
  """A workdir holding only `source`'s checkpoint at `step`."""
  os.makedirs(os.path.join(destination, 'checkpoints'))
  shutil.copytree(os.path.join(source, 'checkpoints', str(step)),
                  os.path.join(destination, 'checkpoints', str(step)))
  return destination


def _assert_trees_close(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def test_checkpoints_move_from_one_to_eight_devices_and_back(runs, tmp_path, capsys):
  """Steps 1–3 on 1 device, 4–5 on 8 devices, 6 on 1 device again ≈ 6 steps on 1 device."""
  dirs, straight = runs['dirs'], runs['one_device_state']
  workdir = _only_checkpoint(dirs['one_device'], 3, str(tmp_path / 'moved'))
  out = _finish(_start(workdir, '--config.train.num_steps=5', num_devices=8))
  assert 'resuming from the checkpoint at step 3' in out
  capsys.readouterr()
  moved = train.train_and_evaluate(_config(), workdir)
  assert 'resuming from the checkpoint at step 5' in capsys.readouterr().out

  losses, straight_losses = _losses(workdir), _losses(dirs['one_device'])
  assert sorted(losses) == [4, 5, 6]
  # Not bitwise: 8 devices sum the batch in another order than 1 (~1e-7 apart).
  np.testing.assert_allclose([losses[s] for s in (4, 5, 6)], [straight_losses[s] for s in (4, 5, 6)],
                             rtol=1e-5)
  assert int(moved.step) == 6
  _assert_trees_close(moved.params, straight.params, rtol=1e-4, atol=1e-6)
  _assert_trees_close(moved.ema_params, straight.ema_params, rtol=1e-4, atol=1e-6)


def _read_samples(folder):
  samples = {}
  for path in glob.glob(os.path.join(folder, 'samples', '*', 'w*.npz')):
    with np.load(path) as batch:
      samples[os.path.basename(path)] = (batch['arr_0'], batch['arr_1'])
  return samples


def test_samples_do_not_depend_on_the_device_count(runs, tmp_path):
  """The same examples from 1, 2 and 8 devices, in 1, 2 and 3 batches (the last one padded), the network
  called on the whole batch (1 device) or in sequential chunks (sampling.max_network_batch): on 2 devices
  5 calls of rows j, j + 5, … (2 weights × 2 rows per device each), on 8 devices 2 calls."""
  batch_sizes, max_network_batch = {1: 20, 2: 10, 8: 8}, {2: 4, 8: 2}
  dirs = {n: _only_checkpoint(runs['dirs']['one_device'], 6, str(tmp_path / f'devices{n}')) for n in batch_sizes}
  assert [samplers.chunk_count(2 * batch_sizes[n], max_batch=max_network_batch[n], devices=n, lanes=2)
          for n in (2, 8)] == [5, 2]
  processes = [_start(dirs[n], '--config.mode=sample', '--config.sampling.num_samples=20',
                      f'--config.sampling.batch_size={batch_sizes[n]}',
                      f'--config.sampling.max_network_batch={max_network_batch[n]}', num_devices=n)
               for n in (2, 8)]
  config = _config()
  config.sampling.update(dict(num_samples=20, batch_size=batch_sizes[1]))
  sample.run(config, dirs[1])
  for process in processes:
    _finish(process)
  one = _read_samples(dirs[1])
  assert sorted(one) == ['w0.npz', 'w1.npz']
  for n in (2, 8):
    many = _read_samples(dirs[n])
    for name, (images, labels) in one.items():
      np.testing.assert_array_equal(many[name][1], labels)
      # The float images differ in summation order only; rounded to uint8 a pixel may move by one level.
      difference = np.abs(many[name][0].astype(int) - images.astype(int))
      print(f'{n} devices, {name}: {np.mean(difference > 0):.2e} of pixels differ, by at most {difference.max()}')
      assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3


def test_labels_stay_with_their_images_on_a_mesh_not_grouped_by_process(tmp_path):
  """Devices ordered p0, p1, p0, p1: a process's rows land on its devices, not on rows p·L … (p + 1)·L.
  Process 1 enters the sampler 35 s after process 0: longer than gloo waits for a peer when it sets up a
  communicator on the first collective, so this also checks that data_mesh set them up beforehand."""
  port, out = _free_port(), str(tmp_path / 'two.npz')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  hosts = [subprocess.Popen([sys.executable, '-m', 'tests.sample_on_mesh', str(port), str(i), out, '35'], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for host in hosts:
    _finish(host)
  _, one_labels, one_images = sample_on_mesh.smoke_samples(parallel.data_mesh())  # here: 1 device
  with np.load(out) as two_processes:
    np.testing.assert_array_equal(two_processes['ids'], np.arange(8))
    np.testing.assert_array_equal(two_processes['labels'], one_labels)
    # Another device count sums in another order: a pixel may move by one uint8 level.
    difference = np.abs(two_processes['images'].astype(int) - one_images.astype(int))
    assert difference.max() <= 1, difference.max()


def _launch_processes(workdir, *flags, count):
  """`count` processes × 1 device on localhost (count = 1: one process × 2 devices, the same devices)."""
  if count == 1:
    return [_start(workdir, *flags, num_devices=2)]
  port = _free_port()
  return [_start(workdir, f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={count}',
                 f'--process_id={i}', *flags) for i in range(count)]


def _files(workdir, mode):
  """{relative path: bytes} of every file the mode wrote (PNG grids and TensorBoard events aside)."""
  found = {}
  for path in glob.glob(os.path.join(workdir, mode, '**', '*'), recursive=True):
    if os.path.isfile(path) and not path.endswith('.png'):
      with open(path, 'rb') as f:
        found[os.path.relpath(path, workdir)] = f.read()
  return found


EVAL_FLAGS = ('--config.mode=eval', '--config.sampling.num_samples=80', '--config.sampling.batch_size=10',
              f'--config.eval.feature_net_dir={ROOT}/experiments/fashion_mnist/feature_net')


def test_two_processes_evaluate_and_sample_like_one_and_a_killed_evaluation_resumes(runs, tmp_path):
  """Process 0 decides which rounds and weights are left and writes every file: two processes give the
  files of one process on the same two devices, byte for byte (what records the run itself aside: results.json's
  provenance, the round records' process count and times), also after one of them was killed
  mid-evaluation (the job with it) and the evaluation was started again."""
  dirs = {name: _only_checkpoint(runs['dirs']['two_devices'], _sigterm_step(runs), str(tmp_path / name))
          for name in ('one', 'two')}
  for process in _launch_processes(dirs['one'], *EVAL_FLAGS, count=1):
    _finish(process)

  hosts = _launch_processes(dirs['two'], *EVAL_FLAGS, count=2)
  while not glob.glob(os.path.join(dirs['two'], 'eval', '*', 'round_00000.npz')):
    assert all(host.poll() is None for host in hosts), [host.communicate() for host in hosts]
    time.sleep(0.02)
  hosts[1].kill()  # one host dies; the job dies with it
  hosts[0].kill()
  for host in hosts:
    host.communicate()
  finished = glob.glob(os.path.join(dirs['two'], 'eval', '*', 'round_*.npz'))
  assert 1 <= len(finished) < 8, finished
  outputs = [_finish(host) for host in _launch_processes(dirs['two'], *EVAL_FLAGS, count=2)]
  assert 'results:' in outputs[0] and 'results:' not in outputs[1]  # only process 0 reports and writes
  one, two = _files(dirs['one'], 'eval'), _files(dirs['two'], 'eval')
  assert sorted(one) == sorted(two) and any(name.endswith('results.json') for name in one)
  for name in one:
    if name.endswith('results.json'):  # its provenance records the run: process count, wall time, date
      ours, theirs = json.loads(one[name]), json.loads(two[name])
      assert [r['provenance']['machine']['process_count'] for r in (ours, theirs)] == [1, 2]
      for key in ('evaluators', 'checkpoint', 'config', 'labels', 'reference'):
        assert ours['provenance'][key] == theirs['provenance'][key], key
      ours.pop('provenance'), theirs.pop('provenance')
      assert ours == theirs
      continue
    if re.search(r'round_\d+\.json$', name):  # what sampled the round: provenance alone, written by process 0
      ours, theirs = json.loads(one[name]), json.loads(two[name])
      assert sorted(ours) == sorted(theirs) and ours['commit'] == theirs['commit'], name
      assert [r['machine']['process_count'] for r in (ours, theirs)] == [1, 2], name
      continue
    assert two[name] == one[name], name

  sample_flags = ('--config.mode=sample', '--config.sampling.num_samples=20', '--config.sampling.batch_size=10')
  for count in (1, 2):
    for process in _launch_processes(dirs['one' if count == 1 else 'two'], *sample_flags, count=count):
      _finish(process)
  one, two = _files(dirs['one'], 'samples'), _files(dirs['two'], 'samples')
  assert sorted(one) == sorted(two) and len(one) == 3, sorted(one)  # w0.npz, w1.npz, nfe.json
  for name in one:
    assert two[name] == one[name], name


def test_what_process_zero_decides_or_raises_reaches_every_process():
  port = _free_port()
  hosts = [subprocess.Popen([sys.executable, '-m', 'tests.decide_on_processes', str(port), str(i)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  results = [host.communicate(timeout=300) for host in hosts]
  for host, (out, _) in zip(hosts, results):
    assert host.returncode != 0  # both stop at the refusal, neither waits for the other
    assert "decided {'rounds': [0, 2], 'decided_on': 0}" in out  # process 1 got process 0's value
  assert 'cfg.errors.WorkdirError: that folder holds another evaluation' in results[0][1]
  assert ('cfg.errors.ProcessZeroUserError: process 0 stopped: WorkdirError: that folder holds another '
          'evaluation') in results[1][1]
