"""Checks a config before anything runs, so bad input fails with one message that says how to fix it.

Settings that cannot work raise ConfigError; settings that run but are known to give poor samples are
printed as one `warning:` line each (`config_warnings`) and run as asked.
"""

import math

DATASETS = ('fashion_mnist', 'cifar10', 'imagenet64', 'imagenet128')
MODES = ('train', 'sample', 'eval', 'sweep')
SAMPLERS = ('ancestral', 'ddim', 'dpmpp_2m', 'heun')  # cfg.solvers.SOLVERS (a test keeps them equal)
GRIDS = ('uniform_u', 'uniform_logsnr', 'edm')  # cfg.solvers.GRIDS
METHODS = ('cfg', 'interval', 'schedule', 'rescale', 'threshold', 'apg', 'cfgpp', 'cfg_zero_star',
           'autoguidance')  # cfg.guidance.METHODS
SCHEDULES = ('constant', 'linear', 'cosine', 'step')  # cfg.guidance.SCHEDULES
LABEL_PROTOCOLS = ('balanced', 'uniform')  # cfg.generate.labels_for
SPLITS = {'fashion_mnist': ('train', 'test'), 'cifar10': ('train', 'test'),
          'imagenet64': ('train', 'validation'), 'imagenet128': ('train', 'validation')}  # cfg.data


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


def config_warnings(config):
  """One message per setting that runs but is known to be poor."""
  s, d = config.sampling, config.diffusion
  messages = []
  if s.sampler == 'heun' and s.grid == 'uniform_u':
    # σ_e = e^{−λ/2} = tan(a u + b) on the truncated-cosine grid (paper §1), u = 1 and 1 − 1/(T − 1).
    levels = s.num_steps if s.nfe is None else (s.nfe + 1) // 2 + 1  # num_steps_for_nfe
    b = math.atan(math.exp(-0.5 * d.logsnr_max))
    a = math.atan(math.exp(-0.5 * d.logsnr_min)) - b
    sigmas = [math.tan(a * u + b) for u in (1.0, 1.0 - 1.0 / (levels - 1))]
    messages.append(
        f'config.sampling.sampler=heun on sampling.grid=uniform_u: its first step jumps from σ_e = '
        f'{sigmas[0]:,.0f} to {sigmas[1]:,.1f}, where the trapezoid is poor; use '
        '--config.sampling.grid=uniform_logsnr or edm.')
  return messages


def check_config(config):
  """Raises ConfigError for the first field that cannot work; prints `config_warnings`."""
  _require(config.mode in MODES, f'config.mode={config.mode!r} is unknown; use one of {MODES}.')
  _require(config.data.name in DATASETS,
           f'config.data.name={config.data.name!r} is unknown; use one of {DATASETS}.')
  _require(config.data.num_classes >= 1, 'config.data.num_classes must be >= 1.')
  d = config.diffusion
  _require(0.0 <= d.p_uncond <= 1.0,
           f'config.diffusion.p_uncond={d.p_uncond} must lie in [0, 1] (the paper uses 0.1, 0.2, 0.5).')
  _require(d.logsnr_min < d.logsnr_max,
           f'config.diffusion.logsnr_min={d.logsnr_min} must be below logsnr_max={d.logsnr_max}.')
  _check_sampling(config)
  weights = guidance_weights(config)
  _require(len(weights) >= 1, 'config.guidance.weights is empty; give at least one guidance weight.')
  _require(min(weights) >= -1.0,
           f'guidance weight {min(weights)} is below -1: w = -1 is already the unconditional model '
           '(scale s = 1 + w = 0); use w >= -1.')
  _check_guidance(config, weights)
  _check_evaluation(config)
  o = config.optim
  _require(o.optimizer in ('adam', 'adamw'), f'config.optim.optimizer={o.optimizer!r}; use adam or adamw.')
  _require(o.learning_rate > 0, f'config.optim.learning_rate={o.learning_rate} must be positive.')
  _require(0.0 <= o.ema_rate < 1.0, f'config.optim.ema_rate={o.ema_rate} must lie in [0, 1).')
  t = config.train
  _require(t.batch_size >= 1 and t.num_steps >= 0, 'config.train.batch_size must be positive, num_steps >= 0.')
  _require(t.checkpoint_every >= 1, 'config.train.checkpoint_every must be >= 1.')
  check_steps_per_call(t)
  _require(t.on_nonfinite in ('skip', 'stop'),
           f'config.train.on_nonfinite={t.on_nonfinite!r}; use skip or stop.')
  m = config.model
  _require(m.compute_dtype in ('float32', 'bfloat16'),
           f'config.model.compute_dtype={m.compute_dtype!r}; use float32 or bfloat16.')
  _require(m.conv_impl in ('xla', 'onednn', 'auto'),
           f'config.model.conv_impl={m.conv_impl!r}; use xla, onednn or auto.')
  _require(m.get('attention_impl', 'auto') in ('xla', 'cudnn', 'auto'),
           f'config.model.attention_impl={m.get("attention_impl")!r}; use xla, cudnn or auto.')
  _require((m.num_heads > 0) != (m.head_channels > 0),
           'set exactly one of config.model.num_heads and config.model.head_channels (the other -1).')
  _check_widths(config)
  for message in config_warnings(config):
    print(f'warning: {message}', flush=True)


def _check_widths(config):
  """Every level's width (base_channels × channel_mult) splits into the GroupNorm groups and, where the
  level attends (attn_resolutions, and the middle block at the last level), into whole heads."""
  m = config.model
  heads = f'num_heads={m.num_heads}' if m.num_heads > 0 else f'head_channels={m.head_channels}'
  last = len(m.channel_mult) - 1
  for level, mult in enumerate(m.channel_mult):
    width, height = m.base_channels * mult, config.data.image_size // 2 ** level
    _require(width % m.norm_groups == 0,
             f'config.model: level {level} has {width} channels (base_channels={m.base_channels} × {mult}), '
             f'not a multiple of norm_groups={m.norm_groups}; change base_channels or norm_groups.')
    if height in m.attn_resolutions or level == last:
      _require(width % (m.num_heads if m.num_heads > 0 else m.head_channels) == 0,
               f'config.model: level {level} ({height}×{height}) attends over {width} channels, which '
               f'{heads} does not divide into whole heads; change base_channels or the heads.')


def _check_sampling(config):
  s = config.sampling
  _require(s.sampler in SAMPLERS, f'config.sampling.sampler={s.sampler!r} is unknown; use one of {SAMPLERS}.')
  _require(s.grid in GRIDS, f'config.sampling.grid={s.grid!r} is unknown; use one of {GRIDS}.')
  _require(s.num_steps >= 2, f'config.sampling.num_steps={s.num_steps} must be at least 2 grid levels '
           '(from λ_min to λ_max); a positive number of steps.')
  if s.nfe is not None:
    _require(s.nfe >= 1, f'config.sampling.nfe={s.nfe} must be a positive number of network '
             'evaluations per image.')
  _require(0.0 <= s.variance_interp <= 1.0,
           f'config.sampling.variance_interp={s.variance_interp} must lie in [0, 1] (paper: 0.3 or 0.2).')
  _require(0.0 <= s.eta <= 1.0, f'config.sampling.eta={s.eta} must lie in [0, 1] (DDIM: 0 deterministic, '
           '1 the posterior variance).')
  _require(s.guide_state in ('evaluation', 'step'),
           f'config.sampling.guide_state={s.guide_state!r} is unknown; use evaluation (a guidance state such '
           'as APG\'s momentum advances at each network evaluation) or step (once per Heun step).')
  _require(s.num_samples >= 1 and s.batch_size >= 1,
           'config.sampling.num_samples and config.sampling.batch_size must be positive.')
  if s.max_network_batch is not None:
    _require(s.max_network_batch >= 1, f'config.sampling.max_network_batch={s.max_network_batch} must be a '
             'positive number of rows per device and network call, or None for no limit.')
  _require(s.labels in LABEL_PROTOCOLS,
           f'config.sampling.labels={s.labels!r} is unknown; use balanced (every class equally often) or '
           'uniform (independent uniform draws).')


def check_steps_per_call(train):
  _require(isinstance(train.steps_per_call, int) and train.steps_per_call >= 1,
           f'config.train.steps_per_call={train.steps_per_call!r} must be a whole number of steps, 1 or more.')


def _check_evaluation(config):
  e = config.eval
  splits = SPLITS.get(config.data.name, ())
  _require(e.reference_split is None or e.reference_split in splits,
           f'config.eval.reference_split={e.reference_split!r} is not a split of {config.data.name}; use '
           f'one of {splits}, or None for the standard one.')
  _require(e.bootstrap_resamples >= 10,
           f'config.eval.bootstrap_resamples={e.bootstrap_resamples} must be at least 10 (the 95% interval '
           'comes from the resamples\' 2.5% and 97.5% quantiles; 200 is the default).')
  _require(isinstance(e.refine, int) and e.refine >= 0,
           f'config.eval.refine={e.refine!r} must be a whole number of refinement passes, 0 or more.')


def _check_guidance(config, weights):
  g, d = config.guidance, config.diffusion
  _require(g.method in METHODS, f'config.guidance.method={g.method!r} is unknown; use one of {METHODS}.')
  _require(g.schedule in SCHEDULES,
           f'config.guidance.schedule={g.schedule!r} is unknown; use one of {SCHEDULES}.')
  lo = d.logsnr_min if g.logsnr_lo is None else g.logsnr_lo
  hi = d.logsnr_max if g.logsnr_hi is None else g.logsnr_hi
  _require(d.logsnr_min <= lo < hi <= d.logsnr_max,
           f'the guidance interval [logsnr_lo, logsnr_hi] = [{lo}, {hi}] must be increasing and lie in '
           f'[λ_min, λ_max] = [{d.logsnr_min}, {d.logsnr_max}] (EDM σ bounds: λ = −2 log σ).')
  _require(0.0 <= g.rescale <= 1.0, f'config.guidance.rescale={g.rescale} (φ) must lie in [0, 1] '
           '(Lin et al. use 0.7; 0 is plain CFG).')
  _require(0.0 < g.percentile <= 100.0,
           f'config.guidance.percentile={g.percentile} must lie in (0, 100] (Imagen uses 99.5).')
  _require(0.0 <= g.step_u <= 1.0, f'config.guidance.step_u={g.step_u} must lie in [0, 1].')
  _require(g.apg_norm_cap is None or g.apg_norm_cap > 0,
           f'config.guidance.apg_norm_cap={g.apg_norm_cap} (r) must be positive, or None for no cap.')
  if g.method == 'cfgpp':
    _require(config.sampling.sampler == 'ddim',
             f'guidance.method=cfgpp (CFG++) needs a solver that re-noises with ε: use '
             f'sampling.sampler=ddim, not {config.sampling.sampler!r}.')
    _require(max(weights) <= 0.0, f'CFG++ takes w ∈ [−1, 0] (its λ = s = 1 + w ∈ [0, 1]); got weight '
             f'{max(weights)}.')
  if g.method == 'autoguidance':
    _require(bool(g.guide_workdir), 'guidance.method=autoguidance needs guidance.guide_workdir: the workdir '
             'of a smaller or shorter-trained conditional model of the same data (Karras et al. 2024).')
