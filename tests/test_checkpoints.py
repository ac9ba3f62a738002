"""Checkpoints: a damaged newest checkpoint falls back to the one before, saying so, and is moved aside so
training saves past it; all damaged, an unwritable workdir, a refused save or a resume that changes the
data order is one clear error."""

import glob
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from cfg import build, parallel, train, train_state
from cfg.checkpoints import Checkpoints, NoReadableCheckpointError
from cfg.errors import CheckpointNotSavedError, ResumeMismatchError
from tests.smoke_config import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# After a failed read, orbax's leftover asyncio callbacks find their event loop closed (noise only).
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')




@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir with checkpoints 3 and 6, the state after 3 steps, trained on its own)."""
  workdir = str(tmp_path_factory.mktemp('six'))
  train.train_and_evaluate(smoke_config(num_steps=6), workdir)
  after_three = train.train_and_evaluate(smoke_config(num_steps=3), str(tmp_path_factory.mktemp('three')))
  return workdir, jax.device_get(after_three)


def _restore(workdir, step=None):
  config = smoke_config()
  state, checkpoints = train_state.restore_or_init(
      config, workdir, model=build.model_from_config(config),
      optimizer=build.optimizer_from_config(config.optim), mesh=parallel.data_mesh(), step=step)
  checkpoints.close()
  return state


def _overwrite_middle(path, count=64):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    f.write(np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes())


def _largest_array_file(state_dir):
  return max(glob.glob(os.path.join(state_dir, 'ocdbt.process_*', 'd', '*')), key=os.path.getsize)


DAMAGE = {
    # Reads back without any error from orbax: only the saved word sums notice.
    'bytes_garbled_in_array_data': lambda state_dir: _overwrite_middle(_largest_array_file(state_dir)),
    'array_data_truncated': lambda state_dir: os.truncate(_largest_array_file(state_dir), 100),
    'tree_metadata_truncated': lambda state_dir: os.truncate(os.path.join(state_dir, '_METADATA'), 1000),
    'index_manifest_garbled': lambda state_dir: _overwrite_middle(os.path.join(state_dir, 'manifest.ocdbt'), 16),
    'state_folder_missing': shutil.rmtree,
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, capsys, damage):
  workdir, after_three = trained
  damaged = str(tmp_path / 'run')
  shutil.copytree(workdir, damaged)
  DAMAGE[damage](os.path.join(damaged, 'checkpoints', '6', 'state'))
  capsys.readouterr()
  state = _restore(damaged)
  assert int(state.step) == 3
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(after_three)):
    np.testing.assert_array_equal(np.asarray(a), b)
  out = capsys.readouterr().out
  assert 'checkpoint at step 6 cannot be read' in out and 'falling back' in out, out


def test_undamaged_checkpoint_restores_the_newest(trained):
  workdir, after_three = trained
  state = _restore(workdir)
  assert int(state.step) == 6
  assert not np.array_equal(np.asarray(state.params['params']['conv_in']['kernel']),
                            after_three.params['params']['conv_in']['kernel'])


def test_every_checkpoint_damaged_is_one_clear_error_and_keeps_them(trained, tmp_path):
  workdir, _ = trained
  damaged = str(tmp_path / 'run')
  shutil.copytree(workdir, damaged)
  for step in ('3', '6'):
    shutil.rmtree(os.path.join(damaged, 'checkpoints', step, 'state'))
  with pytest.raises(NoReadableCheckpointError, match=r'none of the checkpoints .* \(steps \[3, 6\]\)'):
    train.train_and_evaluate(smoke_config(num_steps=8), damaged)
  assert sorted(os.listdir(os.path.join(damaged, 'checkpoints'))) == ['3', '6']


@pytest.mark.parametrize('make_workdir', ['under_a_file', 'under_dev_null'])
def test_workdir_that_cannot_be_a_folder_is_one_clear_error(tmp_path, make_workdir):
  if make_workdir == 'under_a_file':  # root may write anywhere, but not below a regular file
    (tmp_path / 'a_file').write_text('not a folder')
    workdir = str(tmp_path / 'a_file' / 'run')
  else:
    workdir = '/dev/null/run'
  result = subprocess.run([sys.executable, 'launch.py', '--config=configs/smoke.py', f'--workdir={workdir}'],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode != 0
  assert 'is a file, not a folder' in result.stderr and 'Traceback' not in result.stderr, result.stderr


def _files(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_fall_back_from_n_train_past_n_and_restore_the_new_n(trained, tmp_path, capsys):
  """Orbax saves only above the newest step it sees: the unreadable 6 must move aside (kept whole)."""
  workdir, _ = trained
  damaged = str(tmp_path / 'run')
  shutil.copytree(workdir, damaged)
  DAMAGE['state_folder_missing'](os.path.join(damaged, 'checkpoints', '6', 'state'))
  unreadable_files = _files(os.path.join(damaged, 'checkpoints', '6'))
  capsys.readouterr()
  train.train_and_evaluate(smoke_config(num_steps=7), damaged)
  out = capsys.readouterr().out
  assert 'moved the unreadable checkpoint at step 6' in out, out
  assert _files(os.path.join(damaged, 'checkpoints_unreadable', '6')) == unreadable_files
  assert sorted(os.listdir(os.path.join(damaged, 'checkpoints'))) == ['6', '7']
  assert int(_restore(damaged).step) == 7
  # Resume is exact, so the new 6 (trained 4–6 after the fallback) is the undamaged run's 6, bit for bit.
  for a, b in zip(jax.tree.leaves(_restore(damaged, step=6)), jax.tree.leaves(_restore(workdir))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_refused_save_is_an_error_not_silence(trained, tmp_path):
  workdir, _ = trained
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  state = _restore(copy)
  checkpoints = Checkpoints(os.path.join(copy, 'checkpoints'), max_to_keep=2)
  with pytest.raises(CheckpointNotSavedError, match='step 5 was not saved: .* already holds step 6'):
    checkpoints.save(state.replace(step=state.step - 1), config=smoke_config(), data_position=5)
  checkpoints.close()
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == ['3', '6']


@pytest.mark.parametrize('field, value', [('train.batch_size', 8), ('seed', 1)])
def test_resume_with_another_data_order_stops_naming_the_field(trained, tmp_path, field, value):
  workdir, _ = trained
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  config = smoke_config(num_steps=7)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ResumeMismatchError, match=rf'config.{field}={value}, but the checkpoint at step 6 '
                                                r'was trained with (16|0)'):
    train.train_and_evaluate(config, copy)
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == ['3', '6']
  if field == 'seed':  # accepted explicitly, the run continues
    config.train.resume_accept_data_change = True
    assert int(train.train_and_evaluate(config, copy).step) == 7
