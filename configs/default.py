"""Fields shared by every config. Dataset configs start from `get_config()` here and change what differs.

Every config file's `get_config(arg)` takes big_vision-style arguments (`--config=configs/<name>.py:<arg>`):
comma-separated preset names and field=value overrides, e.g. `h100x8`, `p_uncond=0.2`, `smoke,seed=3`
(`apply_arg`). A field is dotted (`diffusion.p_uncond`) or a name only one section has (`p_uncond`).
"""

import ast

from ml_collections import config_dict

from cfg.config_checks import ConfigError
from cfg.sweep import Grid, RunDir, Sweep


def get_config():
  config = config_dict.ConfigDict()
  config.mode = 'train'  # train | sample | eval | sweep
  config.seed = 0
  _add_data_and_model(config)
  _add_training(config)
  _add_sampling_and_evaluation(config)
  return config


def _add_data_and_model(config):
  config.data = config_dict.ConfigDict(dict(
      name='fashion_mnist',  # fashion_mnist | cifar10 | imagenet64 | imagenet128
      fashion_mnist_dir='/usr/share/datasets/fashion-mnist',
      tfds_data_dir=config_dict.placeholder(str),
      manual_dir=config_dict.placeholder(str),
      image_size=28,
      random_flip=False,
      num_classes=10,
  ))

  # ADM U-Net (cfg/models/unet.py). attn_resolutions are feature-map sizes.
  config.model = config_dict.ConfigDict(dict(
      base_channels=64,
      channel_mult=(1, 2, 2),
      num_res_blocks=2,
      attn_resolutions=(7,),
      num_heads=-1,
      head_channels=64,
      dropout=0.0,
      resblock_updown=True,
      norm_groups=32,  # GroupNorm groups (ADM: 32); must divide every level's width
      compute_dtype='float32',  # float32 | bfloat16 (params stay float32)
      remat=False,  # recompute each residual / attention block's activations in the backward pass
      # Who runs the convolutions: xla | onednn (CPU; build: python -m cfg.cli.build_onednn_conv) | auto, oneDNN
      # on a single CPU device where it is built, else XLA. Same parameters and sums either way.
      conv_impl='auto',
      # Who runs attention: xla | cudnn (cuDNN's fused flash attention: NVIDIA GPU, bfloat16, head dim a
      # multiple of 8 up to 128) | auto, cuDNN per attention block where all of that holds, else XLA.
      attention_impl='auto',
  ))



def _add_training(config):
  # The log-SNR process and Algorithm 1.
  config.diffusion = config_dict.ConfigDict(dict(
      logsnr_min=-20.0,
      logsnr_max=20.0,
      p_uncond=0.1,
  ))

  config.optim = config_dict.ConfigDict(dict(
      optimizer='adam',  # adam | adamw
      learning_rate=3e-4,
      warmup_steps=1000,
      b1=0.9,
      b2=0.999,
      weight_decay=0.0,
      grad_clip_norm=1.0,
      ema_rate=0.9999,
      ema_warmup=True,  # decay min(ema_rate, (1 + n)/(10 + n)); False: ema_rate from step 0
  ))

  config.train = config_dict.ConfigDict(dict(
      batch_size=128,  # global, over all devices and processes
      num_steps=100_000,
      log_every=100,
      checkpoint_every=2_000,
      keep_checkpoints=3,
      preview_every=5_000,  # EMA sample grids to TensorBoard; 0 turns them off
      preview_per_class=1,
      on_nonfinite='skip',  # skip: drop the update and count it | stop: end the run with an error
      grad_accum_steps=1,  # split each batch into this many micro-batches, one update of their mean
      # Train steps per dispatch, a lax.scan over that many batches (vdm's way for small, launch-bound
      # models on GPUs); logs, previews, checkpoints and SIGTERM act at the end of the call that reaches them.
      steps_per_call=1,
      resume_accept_data_change=False,  # resume although batch_size or seed differ from the checkpoint's
  ))



def _add_sampling_and_evaluation(config):
  # Solvers (cfg/solvers.py): ancestral = Algorithm 2 (v = variance_interp), ddim (η = eta),
  # dpmpp_2m (DPM-Solver++(2M)), heun (EDM). Grids: uniform_u (Algorithm 2), uniform_logsnr, edm (ρ = 7, σ_e ≤ 80).
  config.sampling = config_dict.ConfigDict(dict(
      sampler='ancestral',  # ancestral | ddim | dpmpp_2m | heun
      grid='uniform_u',  # uniform_u | uniform_logsnr | edm
      num_steps=256,  # T grid levels; ancestral evaluates all T, the ODE solvers take T − 1 steps
      nfe=config_dict.placeholder(int),  # set: an unguided-NFE budget per image instead of num_steps
      variance_interp=0.3,
      eta=0.0,  # DDIM's η ∈ [0, 1]: 0 deterministic, 1 the posterior variance
      guide_state='evaluation',  # heun: a guidance state (APG's momentum) advances per 'evaluation' | 'step'
      clip_x=True,
      num_samples=1_000,
      batch_size=500,  # global, over all devices
      # Set: a network call gets at most this many rows per device (the 2B of a guided call and the
      # vmapped weights counted); a larger one runs as several in sequence in the same program
      # (samplers.in_chunks). Bounds activation memory; on a CPU, 32–64 is faster than one large call.
      max_network_batch=config_dict.placeholder(int),
      seed=1,
      labels='balanced',  # balanced: every class equally often (⌊N/C⌋ or ⌈N/C⌉) | uniform: i.i.d. draws
  ))

  # Paper convention: ε̃ = (1 + w) ε_c − w ε_u; w = 0 is the conditional model (scale s = 1 + w).
  # Methods (cfg/guidance.py, README "Guidance methods"): cfg | interval | schedule | rescale |
  # threshold | apg | cfgpp | cfg_zero_star | autoguidance. Every number below is traced data.
  config.guidance = config_dict.ConfigDict(dict(
      method='cfg',
      weights=(0.0, 0.3, 1.0, 3.0),
      w=config_dict.placeholder(float),  # set to sample at this one weight instead of `weights`
      logsnr_lo=config_dict.placeholder(float),  # interval: guide for λ_lo ≤ λ ≤ λ_hi (σ_e = e^{−λ/2})
      logsnr_hi=config_dict.placeholder(float),  # None: the grid's end
      schedule='constant',  # schedule: constant | linear | cosine | step (over u; rising toward clean)
      step_u=0.5,  # schedule=step: guide where u ≤ step_u
      rescale=0.7,  # rescale: φ ∈ [0, 1] (Lin et al.: 0.7)
      percentile=99.5,  # threshold: p ∈ (0, 100] (Imagen: 99.5)
      apg_eta=0.0,  # apg: η of the parallel part (Sadat et al. recommend 0)
      apg_norm_cap=config_dict.placeholder(float),  # apg: r; None = no cap
      apg_beta=0.0,  # apg: momentum β (e.g. −0.5)
      guide_workdir=config_dict.placeholder(str),  # autoguidance: the guide model's workdir
      guide_step=config_dict.placeholder(int),  # autoguidance: its checkpoint step (None: latest)
  ))

  # Evaluation (launch.py modes eval / sweep): sample quality at every weight of guidance.weights.
  config.eval = config_dict.ConfigDict(dict(
      checkpoint_step=config_dict.placeholder(int),  # None: the latest checkpoint
      feature_net_dir='experiments/fashion_mnist/feature_net',  # Fashion-MNIST feature network
      inception_weights=config_dict.placeholder(str),  # .npz from cfg.evaluation.convert_inception
      reference_batch=config_dict.placeholder(str),  # ADM reference .npz (mu, sigma and/or arr_0)
      # Without reference_batch the reference set is this split; None: the dataset's standard one
      # (train for CIFAR-10 and ImageNet, as ADM / EDM; test for Fashion-MNIST, the feature net's held-out
      # split). README "Comparability".
      reference_split=config_dict.placeholder(str),
      fd_dinov2=False,  # also FD_DINOv2 (EDM2's recipe); needs dinov2_weights
      dinov2_weights=config_dict.placeholder(str),  # .npz from cfg.evaluation.convert_dinov2
      bootstrap_resamples=200,  # resamples of each Fréchet distance's 95% interval (cost ∝ resamples·N·D²)
      save_samples=True,  # ADM-format .npz of the samples per w
      weights_per_program=config_dict.placeholder(int),  # None: all weights vmapped in one program
      # Passes after the first at the midpoints between the best w so far and its neighbours (bisecting
      # toward the optimum, the same noise), each in the evaluation's refine<k>/; 0: guidance.weights only.
      refine=0,
  ))


def paper_sweeps(guide=()):
  """The paper's grids: p_uncond ∈ {0.1, 0.2, 0.5} (Table 1), T ∈ {128, 256, 1024} (Table 2), and the
  guided-sampling frontier of one p_uncond = 0.1 run (`frontier_grid`, with autoguidance's guide run
  `guide`) at the config's own w grid."""
  return {
      'p_uncond': Sweep('diffusion.p_uncond', (0.1, 0.2, 0.5)),
      'num_steps': Sweep('sampling.num_steps', (128, 256, 1024), train=False,
                         base_overrides=(('diffusion.p_uncond', 0.1),)),
      'frontier': frontier_grid(guide=guide),
  }


# The guidance interval of Kynkäänniemi et al. (EDM2's σ ∈ (0.28, 2.9]) in λ = −2 log σ.
INTERVAL = (('guidance.logsnr_lo', -2.13), ('guidance.logsnr_hi', 2.55))
# CFG++ guides with s = 1 + w ∈ [0, 1] (its λ): w ∈ [−1, 0].
CFGPP_WEIGHTS = (-0.8, -0.6, -0.4, -0.2, 0.0)


def frontier_grid(*, base_overrides=(('diffusion.p_uncond', 0.1),), run='frontier', checkpoints=(),
                  guide=(), **costs):
  """Guidance method × sampler × NFE on one trained run (cells of a Grid, each evaluated at the config's
  guidance.weights; the ODE solvers on EDM's ρ = 7 grid, the ancestral sampler on Algorithm 2's):
    cfg at every sampler (ancestral v, ddim, dpmpp_2m, heun) × unguided NFE 8, 16, 32, 64;
    the ancestral sampler at T = 128 and 256 (Table 2's axis);
    interval, cosine schedule, APG (η = 0, β = −0.5), rescale (φ = 0.7) with ddim and heun at NFE 16,
    CFG++ with ddim at NFE 16 (its own w ∈ [−1, 0]);
    cfg with ddim at NFE 16 at each of `checkpoints` (optimal w against training length);
    autoguidance with ddim and heun at NFE 16, guided by the run `guide` (overrides of base_overrides:
    Karras et al. 2024's smaller, shorter-trained network), trained first in <root>/guide; none if empty;
    APG with heun at NFE 16 again, its momentum advanced once per Heun step instead of at both evaluations.
  """
  methods = [
      (('guidance.method', 'interval'), *INTERVAL),
      (('guidance.method', 'schedule'), ('guidance.schedule', 'cosine')),
      (('guidance.method', 'apg'), ('guidance.apg_eta', 0.0), ('guidance.apg_beta', -0.5)),
      (('guidance.method', 'rescale'), ('guidance.rescale', 0.7)),
  ]
  def solver(sampler, nfe):
    grid = 'uniform_u' if sampler == 'ancestral' else 'edm'
    return (('sampling.sampler', sampler), ('sampling.grid', grid), ('sampling.nfe', nfe))

  at_16 = lambda sampler: solver(sampler, 16)
  cells = [solver(sampler, nfe) for sampler in ('ancestral', 'ddim', 'dpmpp_2m', 'heun')
           for nfe in (8, 16, 32, 64)]
  cells += [(('sampling.sampler', 'ancestral'), ('sampling.num_steps', steps)) for steps in (128, 256)]
  cells += [at_16(sampler) + method for sampler in ('ddim', 'heun') for method in methods]
  cells += [at_16('ddim') + (('guidance.method', 'cfgpp'), ('guidance.weights', CFGPP_WEIGHTS))]
  cells += [at_16('ddim') + (('eval.checkpoint_step', step),) for step in checkpoints]
  guides = (('guide', tuple(guide)),) if guide else ()
  if guide:
    cells += [at_16(sampler) + (('guidance.method', 'autoguidance'), ('guidance.guide_workdir', RunDir('guide')))
              for sampler in ('ddim', 'heun')]
  cells += [at_16('heun') + methods[2] + (('sampling.guide_state', 'step'),)]
  return Grid(cells=tuple(cells), base_overrides=tuple(base_overrides), run=run, guides=guides, **costs)


def apply_arg(config, arg, presets=None):
  """`config` with the presets and overrides of `arg` applied left to right (None or '': unchanged).

  presets: {name: {'overrides': {'section.field': value, …}, …}} (PRESETS of the config file).
  """
  presets = presets or {}
  for token in filter(None, (t.strip() for t in _split_top_level(arg or ''))):
    if '=' not in token:
      if token not in presets:
        raise ConfigError(f'unknown preset {token!r}; this config has {sorted(presets)}.')
      config.update_from_flattened_dict(presets[token]['overrides'])
      continue
    name, text = (part.strip() for part in token.split('=', 1))
    field = _resolve_field(config, name)
    section, _, leaf = field.rpartition('.')
    node = config.get(section) if section else config
    node[leaf] = _parse_value(text, node[leaf], field)
  return config


def _split_top_level(text):
  """'a=1,b=(1, 2),smoke' → ['a=1', 'b=(1, 2)', 'smoke']: commas inside brackets stay."""
  tokens, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += char in '([{'
    depth -= char in ')]}'
    if char == ',' and depth == 0:
      tokens.append(text[start:i])
      start = i + 1
  return tokens + [text[start:]]


def _resolve_field(config, name):
  """'diffusion.p_uncond' as it is; 'p_uncond' → the one section that has it."""
  if '.' in name:
    section, _, leaf = name.rpartition('.')
    if section in config and isinstance(config[section], config_dict.ConfigDict) and leaf in config[section]:
      return name
    raise ConfigError(f'unknown config field {name!r} in the config argument; see configs/default.py.')
  if name in config and not isinstance(config[name], config_dict.ConfigDict):
    return name
  owners = [s for s, v in config.items() if isinstance(v, config_dict.ConfigDict) and name in v]
  if len(owners) != 1:
    raise ConfigError(f'config argument field {name!r} ' + (
        f'is in several sections ({", ".join(owners)}); write it as <section>.{name}.' if owners
        else 'is unknown; see configs/default.py.'))
  return f'{owners[0]}.{name}'


def _parse_value(text, current, field):
  """A Python literal (numbers, tuples, None, True) or else the text itself, as the field's type."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and value is not None and not isinstance(value, type(current)):
    raise ConfigError(f'config argument {field}={text!r}: expected a {type(current).__name__}, '
                      f'like {current!r}.')
  return value
