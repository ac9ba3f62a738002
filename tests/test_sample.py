"""The `sample` mode and its config: methods and solvers through the config, NFE on disk, bad input,
autoguidance's guide loading, per-batch labels."""

import json
import os

import jax
import numpy as np
import pytest

from cfg import config_checks, generate, guidance, parallel, sample, solvers, train
from cfg.trained import load_ema_params, load_guide, make_sample_fn
from cfg.config_checks import ConfigError, check_config
from cfg.evaluation import adm_io
from tests.smoke_config import smoke_config


def test_config_names_equal_the_registries():
  assert set(config_checks.SAMPLERS) == set(solvers.SOLVERS)
  assert set(config_checks.GRIDS) == set(solvers.GRIDS)
  assert set(config_checks.METHODS) == set(guidance.METHODS)
  assert set(config_checks.SCHEDULES) == set(guidance.SCHEDULES)


@pytest.mark.parametrize('overrides, message', [
    ({'sampling.sampler': 'euler'}, "sampler='euler' is unknown"),
    ({'sampling.grid': 'karras'}, "grid='karras' is unknown"),
    ({'guidance.method': 'pag'}, "method='pag' is unknown"),
    ({'guidance.schedule': 'square'}, "schedule='square' is unknown"),
    ({'guidance.logsnr_lo': 3.0, 'guidance.logsnr_hi': -1.0}, 'must be increasing and lie in'),
    ({'guidance.logsnr_lo': -25.0}, 'must be increasing and lie in'),
    ({'guidance.rescale': 1.2}, r'rescale=1.2 \(φ\) must lie in \[0, 1\]'),
    ({'guidance.percentile': 0.0}, r'percentile=0.0 must lie in \(0, 100\]'),
    ({'guidance.percentile': 101.0}, r'percentile=101.0 must lie in \(0, 100\]'),
    ({'sampling.eta': -0.1}, r'eta=-0.1 must lie in \[0, 1\]'),
    ({'guidance.method': 'cfgpp', 'sampling.sampler': 'heun'}, 'CFG\\+\\+\\) needs a solver that re-noises'),
    ({'guidance.method': 'cfgpp', 'sampling.sampler': 'ddim'}, r'CFG\+\+ takes w ∈ \[−1, 0\]'),
    ({'guidance.method': 'autoguidance'}, 'needs guidance.guide_workdir'),
    ({'sampling.num_steps': 1}, 'must be at least 2 grid levels'),
    ({'sampling.nfe': 0, 'sampling.sampler': 'heun'}, 'must be a positive number of network'),
    ({'guidance.apg_norm_cap': 0.0}, 'apg_norm_cap=0.0 .* must be positive'),
    ({'sampling.max_network_batch': 0}, 'max_network_batch=0 must be a positive number of rows per device'),
])
def test_bad_sampling_and_guidance_fields_give_one_clear_message(overrides, message):
  config = smoke_config()
  for field, value in overrides.items():
    section, name = field.split('.')
    config[section][name] = value
  with pytest.raises(ConfigError, match=message):
    check_config(config)


def test_nfe_budget_sets_the_number_of_steps():
  config = smoke_config()
  for sampler, nfe, steps, total in (('ancestral', 8, 8, 16), ('ddim', 8, 9, 16),
                                     ('dpmpp_2m', 8, 9, 16), ('heun', 8, 5, 14), ('heun', 7, 5, 14)):
    config.sampling.update(dict(sampler=sampler, nfe=nfe))
    check_config(config)
    assert generate.num_steps(config) == steps
    # Guided: twice the unguided evaluations, ≤ the budget (Heun: 2(T − 1) − 1 = 7).
    assert generate.evaluations(config).total == total


def test_every_batch_gets_its_own_labels():
  config = smoke_config()
  config.sampling.batch_size = 4
  mesh = parallel.data_mesh()
  seen = []

  def fake_sample_fn(params, key, labels, example_ids, weights):
    del params, key
    seen.append(np.asarray(labels))
    return np.zeros((len(weights), len(labels), 2, 2, 1), np.float32) + np.asarray(example_ids)[None, :, None, None, None]

  labels = np.arange(10) % 7
  batches = list(generate.sample_batches(fake_sample_fn, None, mesh=mesh, config=config, weights=[0.0],
                                         num_samples=10, labels=labels))
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
  np.testing.assert_array_equal(seen[1], labels[4:8])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(smoke_config(num_steps=2, checkpoint_every=2), workdir)
  return workdir


def _sample_config(**guidance_fields):
  config = smoke_config(num_steps=2, checkpoint_every=2)
  config.mode = 'sample'
  config.sampling.update(dict(num_samples=6, batch_size=6, num_steps=4))
  config.guidance.update(guidance_fields)
  return config


def test_autoguidance_with_itself_as_guide_gives_the_conditional_model(trained):
  mesh = parallel.data_mesh()
  config = _sample_config(method='autoguidance', guide_workdir=trained)
  check_config(config)
  model, params, _ = load_ema_params(config, trained, mesh)
  fn = make_sample_fn(model, config, mesh)
  key, ids = jax.random.PRNGKey(0), np.arange(6)
  labels = generate.labels_for(ids, num_classes=10, seed=0)
  rows = lambda a: generate._local_rows(a, mesh)  # pylint: disable=protected-access
  x = np.asarray(fn(params, key, rows(labels), rows(ids), np.array([0.0, 2.0], np.float32)))
  np.testing.assert_allclose(x[1], x[0], atol=2e-5)  # guide = main: every w is the w = 0 sample
  assert generate.evaluations(config) == (3, 3)


def test_autoguidance_rejects_a_missing_or_incompatible_guide(trained, tmp_path):
  mesh = parallel.data_mesh()
  with pytest.raises(ConfigError, match='no checkpoints in guidance.guide_workdir'):
    load_guide(_sample_config(method='autoguidance', guide_workdir=str(tmp_path)), mesh)
  other = _sample_config(method='autoguidance', guide_workdir=trained)
  other.data.num_classes = 5
  with pytest.raises(ConfigError, match='data.num_classes=10, the main model on 5'):
    load_guide(other, mesh)
  other = _sample_config(method='autoguidance', guide_workdir=trained)
  other.data.image_size = 32
  with pytest.raises(ConfigError, match='data.image_size=28'):
    load_guide(other, mesh)


def test_the_guide_runs_on_this_run_s_convolutions_and_attention_not_those_stored_with_it(trained):
  from cfg.trained import stored_config
  assert stored_config(trained)[1]['model']['conv_impl'] == 'auto'  # oneDNN's where built, as here in CI
  config = _sample_config(method='autoguidance', guide_workdir=trained)
  config.model.update(conv_impl='xla', attention_impl='xla')
  guide_model, _, _ = load_guide(config, parallel.data_mesh())
  assert (guide_model.conv_impl, guide_model.attention_impl) == ('xla', 'xla')


def test_without_a_guide_network_autoguidance_configs_preview_with_cfg(capsys):
  config = _sample_config(method='autoguidance', guide_workdir='/nonexistent')
  assert generate.sampler_kwargs(config)['method'] is guidance.get_method('autoguidance')
  generate.make_sample_fn(None, config, parallel.data_mesh())  # builds, does not trace
  assert 'sampling with guidance.method=cfg instead of autoguidance' in capsys.readouterr().out


def _launch(workdir, *flags):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, 'launch.py', '--config=configs/smoke.py', f'--workdir={workdir}',
                         '--config.mode=sample', *flags], cwd=root, capture_output=True, text=True)


def test_launch_samples_with_a_method_and_sampler_and_writes_nfe_and_adm_batches(trained):
  # EDM grid at T = 4: λ = −20, −14.7, −6.1, 20; the interval [−8, 0] holds one evaluated level.
  flags = ('--config.guidance.method=interval', '--config.guidance.logsnr_lo=-8.0',
           '--config.guidance.logsnr_hi=0.0', '--config.sampling.sampler=dpmpp_2m',
           '--config.sampling.grid=edm', '--config.sampling.num_samples=6', '--config.sampling.batch_size=6')
  result = _launch(trained, *flags)
  assert result.returncode == 0, result.stderr
  assert 'dpmpp_2m T=4 (edm grid), interval: NFE 4 per image (3 main + 1 guiding)' in result.stdout
  (folder,) = [f for f in os.listdir(os.path.join(trained, 'samples')) if f.endswith('_interval_edm')]
  folder = os.path.join(trained, 'samples', folder)
  with open(os.path.join(folder, 'nfe.json')) as f:
    assert json.load(f) == {'sampler': 'dpmpp_2m', 'grid': 'edm', 'method': 'interval', 'num_steps': 4,
                            'nfe_per_image': 4, 'nfe_main': 3, 'nfe_guiding': 1}
  for w in (0, 1):  # configs/smoke.py's weights
    images, labels = adm_io.read_sample_batch(os.path.join(folder, f'w{w}.npz'))
    assert images.shape == (6, 28, 28, 1) and labels.dtype == np.int64


@pytest.mark.parametrize('flags, message', [
    (('--config.guidance.method=pag',), "method='pag' is unknown"),
    (('--config.guidance.method=cfgpp', '--config.sampling.sampler=ancestral'), 'needs a solver that re-noises'),
    (('--config.guidance.method=interval', '--config.guidance.logsnr_lo=2.0',
      '--config.guidance.logsnr_hi=-2.0'), 'must be increasing'),
])
def test_launch_rejects_bad_guidance_with_one_message(tmp_path, flags, message):
  result = _launch(str(tmp_path), *flags)
  assert result.returncode != 0 and message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr and not os.listdir(tmp_path)


def test_the_label_protocol_names_the_sample_folder():
  config = smoke_config()
  uniform = config.copy_and_resolve_references()
  uniform.sampling.labels = 'uniform'
  balanced = config.copy_and_resolve_references()
  balanced.sampling.labels = 'balanced'
  assert sample.output_dir(uniform, '/w', 6).name == 'step6_ddim4_n20_seed1'  # the name it always had
  assert sample.output_dir(balanced, '/w', 6).name == 'step6_ddim4_n20_seed1_balanced'
