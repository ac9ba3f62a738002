"""The ImageNet configs carry the paper's settings (paper.md §5, Tables 1–2), field by field."""

import re

import numpy as np
import pytest

from cfg.config_checks import ConfigError, check_config
from configs import cifar10, default, fashion_mnist, imagenet64, imagenet128, smoke
from tests.test_samplers import reference_grid

PAPER = {
    imagenet64: {
        'data.name': 'imagenet64', 'data.image_size': 64, 'data.num_classes': 1000,
        'model.base_channels': 192, 'model.channel_mult': (1, 2, 3, 4), 'model.num_res_blocks': 3,
        'model.attn_resolutions': (32, 16, 8), 'model.head_channels': 64, 'model.num_heads': -1,
        'model.resblock_updown': True, 'model.dropout': 0.1,
        'train.batch_size': 2048, 'optim.learning_rate': 3e-4, 'train.num_steps': 400_000,
        'optim.ema_rate': 0.9999, 'optim.optimizer': 'adam', 'diffusion.p_uncond': 0.1,
        'diffusion.logsnr_min': -20.0, 'diffusion.logsnr_max': 20.0,
        'sampling.sampler': 'ancestral', 'sampling.variance_interp': 0.3, 'sampling.num_steps': 256,
        'sampling.num_samples': 50_000,
    },
    imagenet128: {
        'data.name': 'imagenet128', 'data.image_size': 128, 'data.num_classes': 1000,
        'model.base_channels': 256, 'model.channel_mult': (1, 1, 2, 3, 4), 'model.num_res_blocks': 2,
        'model.attn_resolutions': (32, 16, 8), 'model.num_heads': 4, 'model.head_channels': -1,
        'model.resblock_updown': True, 'model.dropout': 0.0,
        'train.batch_size': 256, 'optim.learning_rate': 1e-4, 'train.num_steps': 2_700_000,
        'optim.ema_rate': 0.9999, 'optim.optimizer': 'adam', 'diffusion.p_uncond': 0.1,
        'diffusion.logsnr_min': -20.0, 'diffusion.logsnr_max': 20.0,
        'sampling.sampler': 'ancestral', 'sampling.variance_interp': 0.2, 'sampling.num_steps': 256,
        'sampling.num_samples': 50_000,
    },
}
PAPER_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0)


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return tuple(config) if isinstance(config, (list, tuple)) else config


@pytest.mark.parametrize('module', list(PAPER), ids=lambda m: m.__name__)
def test_imagenet_configs_match_the_paper(module):
  config = module.get_config()
  for field, expected in PAPER[module].items():
    assert _get(config, field) == expected, field
  assert tuple(config.guidance.weights) == PAPER_WEIGHTS


def test_paper_sweep_grids():
  for module in (imagenet64, imagenet128):
    sweeps = module.sweeps()
    assert tuple(sweeps['p_uncond'].values) == (0.1, 0.2, 0.5) and sweeps['p_uncond'].train
    assert tuple(sweeps['num_steps'].values) == (128, 256, 1024) and not sweeps['num_steps'].train


@pytest.mark.parametrize('module', [default, fashion_mnist, cifar10, imagenet64, imagenet128, smoke],
                         ids=lambda m: m.__name__)
def test_every_config_passes_the_checks(module):
  check_config(module.get_config())


@pytest.mark.parametrize('module, preset', [(m, p) for m in (imagenet64, imagenet128) for p in m.PRESETS])
def test_hardware_presets_keep_the_paper_setting_and_divide_over_their_devices(module, preset):
  """A preset changes how the batch is computed, never what is trained or sampled."""
  config, devices = module.get_config(preset), module.PRESETS[preset]['devices']
  check_config(config)
  for field, value in PAPER[module].items():
    if field != 'sampling.batch_size':
      assert _get(config, field) == value, field
  assert config.train.batch_size % (devices * config.train.grad_accum_steps) == 0
  assert config.sampling.batch_size % devices == 0
  assert tuple(config.guidance.weights) == PAPER_WEIGHTS


def test_heun_on_the_uniform_u_grid_warns_and_runs(capsys):
  config = fashion_mnist.get_config()
  config.sampling.update(dict(sampler='heun', num_steps=8))
  check_config(config)  # a warning, not an error: it samples as asked
  (line,) = capsys.readouterr().out.splitlines()
  # σ_e = e^{−λ/2} of Algorithm 2's grid's first two levels (float64).
  sigmas = np.exp(-0.5 * reference_grid(8)[:2])
  assert line == ('warning: config.sampling.sampler=heun on sampling.grid=uniform_u: its first step '
                  f'jumps from σ_e = {sigmas[0]:,.0f} to {sigmas[1]:,.1f}, where the trapezoid is poor; '
                  'use --config.sampling.grid=uniform_logsnr or edm.')
  assert (f'{sigmas[0]:,.0f}', f'{sigmas[1]:,.1f}') == ('22,026', '4.4')  # the README's numbers
  for grid in ('uniform_logsnr', 'edm'):
    config.sampling.grid = grid
    check_config(config)
    assert capsys.readouterr().out == ''
  config.sampling.update(dict(sampler='ddim', grid='uniform_u'))
  check_config(config)
  assert capsys.readouterr().out == ''


PRESET_CONFIGS = [(m, p) for m in (fashion_mnist, imagenet64, imagenet128) for p in m.PRESETS]


@pytest.mark.parametrize('module, preset', PRESET_CONFIGS, ids=[f'{m.__name__}:{p}' for m, p in PRESET_CONFIGS])
def test_every_preset_builds_and_validates(module, preset):
  config = module.get_config(preset)
  check_config(config)
  overrides = module.PRESETS[preset]['overrides']
  assert all(config[k.split('.')[0]][k.split('.')[1]] == v for k, v in overrides.items())


def test_config_arguments_set_fields_by_short_or_dotted_name():
  assert imagenet64.get_config('p_uncond=0.2').diffusion.p_uncond == 0.2
  assert imagenet64.get_config('diffusion.p_uncond=0.5').diffusion.p_uncond == 0.5
  both = imagenet64.get_config('h100x8,p_uncond=0.2,seed=3')
  assert (both.train.grad_accum_steps, both.diffusion.p_uncond, both.seed) == (8, 0.2, 3)
  assert imagenet64.get_config('learning_rate=1').optim.learning_rate == 1.0  # int → the field's float
  assert fashion_mnist.get_config('smoke').to_dict() == smoke.get_config().to_dict()
  assert smoke.get_config('channel_mult=(1, 2, 2)').model.channel_mult == (1, 2, 2)
  assert imagenet64.get_config('').to_dict() == imagenet64.get_config().to_dict()


@pytest.mark.parametrize('arg, message', [
    ('num_steps=8', "field 'num_steps' is in several sections (sampling, train); write it as <section>.num_steps"),
    ('p_uncnd=0.2', "field 'p_uncnd' is unknown"),
    ('diffusion.p_uncnd=0.2', "unknown config field 'diffusion.p_uncnd'"),
    ('p_uncond=high', "diffusion.p_uncond='high': expected a float, like 0.1"),
    ('h100x9', "unknown preset 'h100x9'; this config has ['h100x8', 'tpu_v5p_64']"),
])
def test_bad_config_arguments_say_what_is_wrong(arg, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    imagenet64.get_config(arg)


@pytest.mark.parametrize('field, value, message', [
    ('sampling.labels', 'stratified', "config.sampling.labels='stratified' is unknown; use balanced"),
    ('sampling.guide_state', 'level', "config.sampling.guide_state='level' is unknown; use evaluation"),
    ('eval.reference_split', 'validation',
     "config.eval.reference_split='validation' is not a split of fashion_mnist; use one of ('train', 'test')"),
    ('eval.bootstrap_resamples', 5, 'config.eval.bootstrap_resamples=5 must be at least 10'),
])
def test_bad_evaluation_fields_get_one_message(field, value, message):
  config = fashion_mnist.get_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=re.escape(message)):
    check_config(config)


@pytest.mark.parametrize('arg, message', [
    ('model.base_channels=12', 'level 0 has 12 channels (base_channels=12 × 1), not a multiple of norm_groups=8'),
    # imagenet64's 96-channel guide would attend over 288 channels at 16×16: 4.5 heads of 64.
    ('model.base_channels=96,model.norm_groups=32',
     'level 2 (16×16) attends over 288 channels, which head_channels=64 does not divide into whole heads'),
])
def test_model_widths_that_do_not_split_into_groups_or_heads_get_one_message(arg, message):
  config = fashion_mnist.get_config(arg) if '96' not in arg else imagenet64.get_config(arg)
  with pytest.raises(ConfigError, match=re.escape(message)):
    check_config(config)
