"""cfg/api.py: the README's example runs in a fresh process on a smoke checkpoint; the API's samples equal
the `sample` mode's; settings are validated like the config."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cfg import api, generate, sample, train
from cfg.config_checks import ConfigError
from tests.smoke_config import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example():
  """The Python block after `<!-- api-example -->` in the README."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    match = re.search(r'<!-- api-example -->\n```python\n(.*?)```', f.read(), re.S)
  return match.group(1)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(smoke_config(num_steps=2, checkpoint_every=2), folder)
  return folder


def test_the_readme_example_runs_in_a_fresh_process(workdir, tmp_path):
  out = str(tmp_path / 'out.npz')
  code = (f'workdir = {workdir!r}\n{readme_example()}\n'
          'import numpy as np\n'
          f'np.savez({out!r}, images=out.images, labels=out.labels, nfe=out.nfe.total, heun=heun.images, '
          'heun_nfe=heun.nfe.total, fd=metrics["fd_fmnist"], accuracy=metrics["class_accuracy"])\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  with np.load(out) as r:
    assert r['images'].shape == (3, 10, 28, 28, 1) and r['images'].dtype == np.uint8
    np.testing.assert_array_equal(r['labels'], np.arange(10))
    assert int(r['nfe']) == 2 * 3  # smoke: DDIM, T = 4, three guided steps of 2 evaluations
    assert r['heun'].shape == (1, 10, 28, 28, 1)
    # Heun on EDM's T = 5 grid from σ_e = 80 to e^{−10}: steps start at λ = −8.8, −5.3, −0.7, 6.1; the
    # three inside [−12, 2] are guided. 4 steps × 2 evaluations − 1 (the last is Euler's) + 3 guided
    # steps × 2 unconditional ones.
    sigma = (80 ** (1 / 7) + np.linspace(0, 1, 5) * (np.exp(-10) ** (1 / 7) - 80 ** (1 / 7))) ** 7
    starts = -2 * np.log(sigma[:-1])
    guided = np.sum((starts >= -12) & (starts <= 2))
    assert guided == 3 and int(r['heun_nfe']) == 2 * 4 - 1 + 2 * guided
    assert np.isfinite(r['fd']) and 0.0 <= float(r['accuracy']) <= 1.0
  assert '(3, 10, 28, 28, 1) 6' in result.stdout


def test_api_samples_equal_the_sample_mode(workdir):
  model = api.load(workdir)
  assert model.step == 2 and model.config.model.base_channels == 8  # the smoke model, from its checkpoint
  config = smoke_config(num_steps=2, checkpoint_every=2)
  config.mode = 'sample'
  config.sampling.update(dict(num_samples=12, batch_size=6))
  folder = sample.run(config, workdir)
  batches = [np.load(os.fspath(folder / f'w{w:g}.npz')) for w in config.guidance.weights]
  labels = batches[0]['arr_1']  # example i of the sample mode has this label and the noise of id i
  out = model.sample(labels, w=config.guidance.weights, batch_size=6)
  for k, batch in enumerate(batches):
    np.testing.assert_array_equal(batch['arr_1'], labels)
    np.testing.assert_array_equal(out.images[k], batch['arr_0'])
  assert out.nfe == generate.evaluations(config)
  # The pure denoiser is the network's ε̂ of the EMA params.
  z = np.zeros((2, 28, 28, 1), np.float32)
  eps = model.denoise(z, np.zeros(2, np.float32), np.array([0, 10], np.int32))
  assert eps.shape == z.shape and np.all(np.isfinite(eps))


def test_settings_are_validated_like_the_config(workdir):
  model = api.load(workdir)
  with pytest.raises(ConfigError, match="sampler='euler' is unknown"):
    model.sampling_config(sampler='euler')
  with pytest.raises(ValueError, match="unknown sampling setting 'temperature'"):
    model.sampling_config(temperature=0.5)
  with pytest.raises(FileNotFoundError, match='no checkpoints in'):
    api.load(os.path.join(workdir, 'nothing-here'))


def test_the_worked_notebook_runs_headlessly(workdir, tmp_path):
  notebook = os.path.join(ROOT, 'experiments', 'notebooks', 'guidance_tradeoff.py')
  env = dict(os.environ, CFG_WORKDIR=workdir, CFG_NOTEBOOK_OUT=str(tmp_path), CFG_PER_CLASS='1', MPLBACKEND='Agg')
  result = subprocess.run([sys.executable, notebook], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'cfg: 5 weights × 10 images, NFE 6 per image' in result.stdout, result.stdout
  assert re.search(r'interval: 5 weights × 10 images, NFE [0-9]+ per image', result.stdout), result.stdout
  assert (tmp_path / 'guidance_tradeoff.png').stat().st_size > 0


def test_score_gives_the_eval_mode_s_rows(workdir):
  model = api.load(workdir)
  out = model.sample(np.arange(10), w=[0.0, 2.0])
  rows = api.score(out, config=model.config)
  assert [row['w'] for row in rows] == [0.0, 2.0]
  single = api.evaluate(out.images[1], out.labels, config=model.config)
  assert single['fd_fmnist'] == rows[1]['fd_fmnist'] and single['is_fmnist'] == rows[1]['is_fmnist']
