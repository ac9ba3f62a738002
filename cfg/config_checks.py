"""Checks a config before anything runs, so bad input fails with one message that says how to fix it."""

DATASETS = ('fashion_mnist', 'cifar10', 'imagenet64', 'imagenet128')
MODES = ('train', 'sample', 'eval', 'sweep')
SAMPLERS = ('ancestral', 'ddim')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _require(condition, message):
  if not condition:
    raise ConfigError(message)


def guidance_weights(config):
  """The weights a sample/eval/sweep run uses: `guidance.w` when set, else `guidance.weights`."""
  if config.guidance.w is not None:
    return (float(config.guidance.w),)
  return tuple(float(w) for w in config.guidance.weights)


def check_config(config):
  """Raises ConfigError for the first field that cannot work."""
  _require(config.mode in MODES, f'config.mode={config.mode!r} is unknown; use one of {MODES}.')
  _require(config.data.name in DATASETS,
           f'config.data.name={config.data.name!r} is unknown; use one of {DATASETS}.')
  _require(config.data.num_classes >= 1, 'config.data.num_classes must be >= 1.')
  d = config.diffusion
  _require(0.0 <= d.p_uncond <= 1.0,
           f'config.diffusion.p_uncond={d.p_uncond} must lie in [0, 1] (the paper uses 0.1, 0.2, 0.5).')
  _require(d.logsnr_min < d.logsnr_max,
           f'config.diffusion.logsnr_min={d.logsnr_min} must be below logsnr_max={d.logsnr_max}.')
  s = config.sampling
  _require(s.sampler in SAMPLERS, f'config.sampling.sampler={s.sampler!r} is unknown; use one of {SAMPLERS}.')
  _require(s.num_steps >= 1, f'config.sampling.num_steps={s.num_steps} must be a positive number of steps.')
  _require(0.0 <= s.variance_interp <= 1.0,
           f'config.sampling.variance_interp={s.variance_interp} must lie in [0, 1] (paper: 0.3 or 0.2).')
  _require(s.num_samples >= 1 and s.batch_size >= 1,
           'config.sampling.num_samples and config.sampling.batch_size must be positive.')
  weights = guidance_weights(config)
  _require(len(weights) >= 1, 'config.guidance.weights is empty; give at least one guidance weight.')
  _require(min(weights) >= -1.0,
           f'guidance weight {min(weights)} is below -1: w = -1 is already the unconditional model '
           '(scale s = 1 + w = 0); use w >= -1.')
  o = config.optim
  _require(o.optimizer in ('adam', 'adamw'), f'config.optim.optimizer={o.optimizer!r}; use adam or adamw.')
  _require(o.learning_rate > 0, f'config.optim.learning_rate={o.learning_rate} must be positive.')
  _require(0.0 <= o.ema_rate < 1.0, f'config.optim.ema_rate={o.ema_rate} must lie in [0, 1).')
  t = config.train
  _require(t.batch_size >= 1 and t.num_steps >= 0, 'config.train.batch_size must be positive, num_steps >= 0.')
  _require(t.checkpoint_every >= 1, 'config.train.checkpoint_every must be >= 1.')
  _require(t.on_nonfinite in ('skip', 'stop'),
           f'config.train.on_nonfinite={t.on_nonfinite!r}; use skip or stop.')
  m = config.model
  _require(m.compute_dtype in ('float32', 'bfloat16'),
           f'config.model.compute_dtype={m.compute_dtype!r}; use float32 or bfloat16.')
  _require((m.num_heads > 0) != (m.head_channels > 0),
           'set exactly one of config.model.num_heads and config.model.head_channels (the other -1).')
