"""Guided samplers: ancestral (paper Algorithm 2) and DDIM (η = 0), each one `lax.scan`.

Both walk the increasing log-SNR grid λ_1 = λ_min < … < λ_T = λ_max of
`cfg.diffusion.sampling_grid` with ONE network evaluation per level (T in total): at level t
the guided ε̃ gives x̃ = (z − σ ε̃)/α, which sets the next z; the last level returns x̃.

Guidance uses the paper's weight w (w = 0: conditional model; the "scale" of later work is
s = 1 + w). `guidance_weight` is always traced data, a scalar or one per example [B], so a
sweep over w never recompiles; `num_steps`, `image_shape`, `null_label`, `guide` and `clip_x`
are static. The loop is one scan, so compile time does not grow with T.

Noise: example i draws from k_i = fold_in(key, example_ids[i]) (initial z from
fold_in(k_i, 0), step t's noise from fold_in(k_i, t + 1)). `example_ids` are global example
indices, so a sample does not depend on how its batch was split across calls or devices.

Arguments shared by `ancestral_sample` and `ddim_sample`:
  denoise: ε(z [B, *image_shape], λ [B], labels [B]) -> ε; called once per level, with batch
    2B ([c; ∅]) when `guide`, else with batch B and the labels alone (guidance_weight unused).
  key: PRNG key. labels: int [B]. image_shape: static shape of one example, e.g. (28, 28, 1).
  num_steps: static T >= 1 (levels = network evaluations). null_label: static index of ∅.
  guidance_weight: w, scalar or [B], traced. clip_x: static, clip x̃ to [−1, 1].
  guide: static, False samples the conditional model alone. logsnr_min, logsnr_max: grid ends.
  example_ids: int [B] global example indices (default arange(B)).
  Returns x̂ with shape [B, *image_shape].

Jitting: keep the network parameters an argument so they are not baked into the program, e.g.

  @jax.jit
  def sample(params, key, labels, guidance_weight):
    return ancestral_sample(functools.partial(model.apply, params), key=key, labels=labels,
                            guidance_weight=guidance_weight, image_shape=(28, 28, 1),
                            num_steps=256, null_label=num_classes)
"""

import numbers

import jax
import jax.numpy as jnp

from cfg import diffusion
from cfg.guidance import guided_eps


def _validate(*, labels, image_shape, num_steps, guidance_weight, example_ids,
              logsnr_min, logsnr_max, variance_interp=0.0):
  """Raises ValueError naming the bad argument; shapes only, so it also runs under jit."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
    raise ValueError(f'num_steps must be a Python int (it is static), got {num_steps!r}.')
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1 (network evaluations), got {num_steps}.')
  if (not isinstance(image_shape, (tuple, list)) or not image_shape
      or not all(isinstance(d, numbers.Integral) and d > 0 for d in image_shape)):
    raise ValueError(f'image_shape must be a tuple of positive ints like (28, 28, 1), '
                     f'got {image_shape!r}.')
  if jnp.ndim(labels) != 1:
    raise ValueError(f'labels must have shape [B], got shape {jnp.shape(labels)}.')
  batch = jnp.shape(labels)[0]
  if jnp.shape(guidance_weight) not in ((), (batch,)):
    raise ValueError(f'guidance_weight must be a scalar or have shape [B] = ({batch},), got '
                     f'shape {jnp.shape(guidance_weight)}; sweep weights with sample_sweep.')
  if example_ids is not None and jnp.shape(example_ids) != (batch,):
    raise ValueError(f'example_ids must have the shape of labels ({batch},), got shape '
                     f'{jnp.shape(example_ids)}.')
  if (isinstance(logsnr_min, numbers.Real) and isinstance(logsnr_max, numbers.Real)
      and not logsnr_min < logsnr_max):
    raise ValueError(f'logsnr_min must be < logsnr_max, got {logsnr_min} and {logsnr_max}.')
  if isinstance(variance_interp, numbers.Real) and not 0.0 <= variance_interp <= 1.0:
    raise ValueError(f'variance_interp must lie in [0, 1], got {variance_interp}.')


def _example_keys(key, example_ids):
  """k_i = fold_in(key, example_ids[i])."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)


def _example_noise(example_keys, index, image_shape):
  """ε_i ~ N(0, I) from fold_in(k_i, index), one draw per example."""
  return jax.vmap(
      lambda k: jax.random.normal(jax.random.fold_in(k, index), image_shape))(example_keys)


def _grid_pairs(num_steps, *, logsnr_min, logsnr_max):
  """(λ_t, λ_{t+1}) for t = 1..T; the last level's λ_{T+1} is a dummy above λ_max.

  The step after the last level is computed and discarded: it keeps the loop one scan with one
  network evaluation per level (the network is traced once), and a dummy λ_{T+1} > λ_T keeps
  that discarded step finite.
  """
  grid = diffusion.sampling_grid(num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  return grid, jnp.append(grid[1:], grid[-1] + 1.0)


def _predict(denoise, z, logsnr, labels, *, guidance_weight, null_label, guide, clip_x):
  """(x̃, ε̂) at one level: x̃ = (z − σ ε̃)/α, optionally clipped to [−1, 1] with ε̂ recomputed."""
  logsnr = jnp.full(labels.shape, logsnr, dtype=z.dtype)
  if guide:
    eps = guided_eps(denoise, z, logsnr, labels, guidance_weight=guidance_weight,
                     null_label=null_label)
  else:
    eps = denoise(z, logsnr, labels)
  eps = eps.astype(z.dtype)
  x = diffusion.x_from_eps(z=z, eps=eps, logsnr=logsnr)
  if clip_x:
    x = jnp.clip(x, -1.0, 1.0)
    eps = diffusion.eps_from_x(z=z, x=x, logsnr=logsnr)
  return x, eps


def ancestral_step(*, z, x, logsnr, logsnr_next, variance_interp, noise):
  """z' = μ̃(z, x̃) + ((σ̃²)^{1−v} (σ²_{λ|λ'})^v)^{1/2} ε   (paper Algorithm 2)."""
  mean, posterior_variance = diffusion.posterior(
      z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
  log_variance = ((1.0 - variance_interp) * jnp.log(posterior_variance) + variance_interp
                  * jnp.log(diffusion.transition_variance(logsnr=logsnr, logsnr_next=logsnr_next)))
  return mean + diffusion.broadcast_from_left(jnp.exp(0.5 * log_variance), z.shape) * noise


def ddim_step(*, x, eps, logsnr_next):
  """z' = α_λ' x̃ + σ_λ' ε̂   (DDIM, η = 0)."""
  alpha_next, sigma_next = diffusion.alpha_sigma(
      diffusion.broadcast_from_left(logsnr_next, x.shape))
  return alpha_next * x + sigma_next * eps


def _sample(update, denoise, *, key, labels, image_shape, num_steps, null_label,
            guidance_weight, clip_x, guide, logsnr_min, logsnr_max, example_ids):
  """z ~ N(0, I) at λ_min; per level x̃, ε̂ and z' = update(...); returns the last level's x̃."""
  labels = jnp.asarray(labels, jnp.int32)
  if example_ids is None:
    example_ids = jnp.arange(labels.shape[0])
  example_keys = _example_keys(key, example_ids)
  image_shape = tuple(image_shape)
  guidance_weight = jnp.asarray(guidance_weight, jnp.float32)
  logsnrs, logsnrs_next = _grid_pairs(num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max)

  def level(carry, inputs):
    z, _ = carry
    step, logsnr, logsnr_next = inputs
    x, eps = _predict(denoise, z, logsnr, labels, guidance_weight=guidance_weight,
                      null_label=null_label, guide=guide, clip_x=clip_x)
    draw_noise = lambda: _example_noise(example_keys, step + 1, image_shape)
    z_next = update(z=z, x=x, eps=eps, logsnr=logsnr, logsnr_next=logsnr_next,
                    draw_noise=draw_noise)
    return (z_next, x), None

  z = _example_noise(example_keys, 0, image_shape)
  (_, x), _ = jax.lax.scan(
      level, (z, jnp.zeros_like(z)), (jnp.arange(num_steps), logsnrs, logsnrs_next))
  return x


def ancestral_sample(denoise, *, key, labels, image_shape, num_steps, null_label,
                     guidance_weight=0.0, variance_interp=0.3, clip_x=False, guide=True,
                     logsnr_min=diffusion.LOGSNR_MIN, logsnr_max=diffusion.LOGSNR_MAX,
                     example_ids=None):
  """x̂ = x̃_T of Algorithm 2: z_{t+1} ~ N(μ̃(z_t, x̃_t), (σ̃²)^{1−v} (σ²_{λ_t|λ_{t+1}})^v).

  `variance_interp` is v: 0 gives the posterior variance σ̃², 1 the forward σ²_{λ|λ'}
  (paper: 0.3 at 64×64, 0.2 at 128×128).
  """
  _validate(labels=labels, image_shape=image_shape, num_steps=num_steps,
            guidance_weight=guidance_weight, example_ids=example_ids, logsnr_min=logsnr_min,
            logsnr_max=logsnr_max, variance_interp=variance_interp)

  def update(*, z, x, eps, logsnr, logsnr_next, draw_noise):
    del eps
    return ancestral_step(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next,
                          variance_interp=variance_interp, noise=draw_noise())

  return _sample(update, denoise, key=key, labels=labels, image_shape=image_shape,
                 num_steps=num_steps, null_label=null_label, guidance_weight=guidance_weight,
                 clip_x=clip_x, guide=guide, logsnr_min=logsnr_min, logsnr_max=logsnr_max,
                 example_ids=example_ids)


def ddim_sample(denoise, *, key, labels, image_shape, num_steps, null_label,
                guidance_weight=0.0, clip_x=False, guide=True,
                logsnr_min=diffusion.LOGSNR_MIN, logsnr_max=diffusion.LOGSNR_MAX,
                example_ids=None):
  """x̂ = x̃_T of DDIM (η = 0): z_{t+1} = α_{t+1} x̃_t + σ_{t+1} ε̂_t, on Algorithm 2's grid.

  With `clip_x`, ε̂ = (z − α x̃)/σ is recomputed from the clipped x̃.
  """
  _validate(labels=labels, image_shape=image_shape, num_steps=num_steps,
            guidance_weight=guidance_weight, example_ids=example_ids, logsnr_min=logsnr_min,
            logsnr_max=logsnr_max)

  def update(*, z, x, eps, logsnr, logsnr_next, draw_noise):
    del z, logsnr, draw_noise
    return ddim_step(x=x, eps=eps, logsnr_next=logsnr_next)

  return _sample(update, denoise, key=key, labels=labels, image_shape=image_shape,
                 num_steps=num_steps, null_label=null_label, guidance_weight=guidance_weight,
                 clip_x=clip_x, guide=guide, logsnr_min=logsnr_min, logsnr_max=logsnr_max,
                 example_ids=example_ids)


SAMPLERS = {'ancestral': ancestral_sample, 'ddim': ddim_sample}


def get_sampler(name):
  """The sampler function called `name` ('ancestral' | 'ddim')."""
  if name not in SAMPLERS:
    raise ValueError(f'Unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.')
  return SAMPLERS[name]


def sample_sweep(sampler_fn, *, guidance_weights, **kwargs):
  """x̂[k] = sampler_fn(guidance_weight=w_k, **kwargs) for all k in one vmapped program.

  Every w_k sees the same key, labels and noise, so the rows differ by guidance alone.
  `sampler_fn` is a sampler with `denoise` (and any static arguments) bound, e.g.
  functools.partial(ancestral_sample, denoise); returns [K, B, *image_shape].
  """
  if 'guidance_weight' in kwargs:
    raise ValueError('sample_sweep takes guidance_weights [K], not guidance_weight.')
  if jnp.ndim(guidance_weights) != 1:
    raise ValueError(f'guidance_weights must have shape [K], got shape '
                     f'{jnp.shape(guidance_weights)}.')
  guidance_weights = jnp.asarray(guidance_weights, jnp.float32)
  return jax.vmap(lambda w: sampler_fn(guidance_weight=w, **kwargs))(guidance_weights)
