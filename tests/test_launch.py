"""launch.py end to end in subprocesses: train → sample on the tiny preset, read back from disk; bad input."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfg.errors import USER_ERRORS
from configs import smoke
from tests.tb_events import image_tags, read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*flags, check=True, config='configs/smoke.py'):
  result = subprocess.run([sys.executable, 'launch.py', f'--config={config}', *flags],
                          cwd=ROOT, capture_output=True, text=True)
  if check and result.returncode:
    raise AssertionError(f'launch.py {flags} failed:\n{result.stdout}\n{result.stderr}')
  return result


def test_train_then_sample_writes_everything(tmp_path):
  workdir = str(tmp_path / 'run')
  launch(f'--workdir={workdir}')
  steps = smoke.get_config().train.num_steps
  scalars = read_scalars(os.path.join(workdir, 'tensorboard'))
  for tag in ('loss', 'grad_norm', 'learning_rate', 'images_per_sec', 'loss/all'):
    assert tag in scalars, sorted(scalars)
  assert scalars['loss'][-1][0] == steps and np.isfinite(scalars['loss'][-1][1])
  assert any(tag.startswith('samples/w') for tag in image_tags(os.path.join(workdir, 'tensorboard')))
  assert os.path.exists(os.path.join(workdir, 'checkpoints', str(steps), 'state'))

  launch(f'--workdir={workdir}', '--config.mode=sample')
  (folder,) = glob.glob(os.path.join(workdir, 'samples', '*'))
  config = smoke.get_config()
  for w in config.guidance.weights:
    with np.load(os.path.join(folder, f'w{w:g}.npz')) as batch:
      images, labels = batch['arr_0'], batch['arr_1']
    assert images.dtype == np.uint8 and images.shape == (config.sampling.num_samples, 28, 28, 1)
    assert labels.shape == (config.sampling.num_samples,) and labels.max() < 10
    grid = np.asarray(Image.open(os.path.join(folder, f'w{w:g}.png')))
    assert grid.shape[1] == 28 * 10


@pytest.mark.parametrize('override, message', [
    ('--config.diffusion.p_uncond=1.5', 'p_uncond'),
    ('--config.sampling.num_steps=-3', 'num_steps'),
    ('--config.guidance.w=-2.0', 'below -1'),
    ('--config.data.name=mnist', "data.name='mnist' is unknown"),
    ('--config.diffusion.no_such_field=1', "unknown config field 'diffusion.no_such_field'"),
    ('--config.no_such_section.field=1', "unknown config field 'no_such_section.field'"),
    ('--config.train.batch_size=abc', 'invalid literal'),
])
def test_bad_config_gives_one_clear_message(tmp_path, override, message):
  result = launch(f'--workdir={tmp_path}', override, check=False)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  assert not os.listdir(tmp_path)



@pytest.mark.parametrize('contents, message', [
    (None, "no such file"),
    ('def get_config(:\n', 'could not be loaded: SyntaxError'),
    ('def get_config():\n  return undefined_name\n', "could not be loaded: NameError: name 'undefined_name'"),
])
def test_missing_or_broken_config_file_is_one_line_naming_it(tmp_path, contents, message):
  path = tmp_path / 'my_config.py'
  if contents is not None:
    path.write_text(contents)
  result = launch(f'--workdir={tmp_path / "run"}', check=False, config=str(path))
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], result.stderr
  assert not (tmp_path / 'run').exists()


def test_unknown_hardware_preset_names_the_known_ones(tmp_path):
  result = launch(f'--workdir={tmp_path}', check=False, config='configs/imagenet64.py:h100x7')
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr
  assert "unknown preset 'h100x7'; this config has ['h100x8', 'tpu_v5p_64']" in result.stderr, result.stderr


def test_debug_reraises_with_the_traceback(tmp_path):
  result = launch(f'--workdir={tmp_path}', '--config.diffusion.p_uncond=1.5', '--debug', check=False)
  assert result.returncode != 0
  assert 'Traceback' in result.stderr and 'ConfigError: config.diffusion.p_uncond=1.5' in result.stderr


def test_only_project_errors_count_as_bad_input():
  """A builtin exception (a bug) is never reported as bad input, so it keeps its traceback."""
  for builtin in (AttributeError, FileNotFoundError, PermissionError, FloatingPointError, ValueError, KeyError):
    assert not issubclass(builtin, USER_ERRORS), builtin
