"""Guided sampling of a trained model, sharded over every device, for a vector of guidance weights.

Example i of a run always gets label `labels_for(i)` and noise from fold_in(key, i), so the images
do not depend on the batch size or the number of devices, and every weight sees the same noise.
Labels follow `sampling.labels`: 'balanced' (each block of num_classes consecutive ids holds every class
once, so any N samples hold ⌊N/C⌋ or ⌈N/C⌉ of each class) or 'uniform' (an independent uniform draw each).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cfg import data, guidance, parallel, samplers, solvers
from cfg.config_checks import LABEL_PROTOCOLS, ConfigError


def num_steps(config):
  """T: `sampling.num_steps`, or the grid levels that spend `sampling.nfe` unguided evaluations per
  image (ancestral T = nfe; ddim, dpmpp_2m T = nfe + 1; heun the largest T with 2T − 3 ≤ nfe)."""
  s = config.sampling
  return s.num_steps if s.nfe is None else samplers.num_steps_for_nfe(s.sampler, s.nfe)


def guidance_params(config, weights=0.0):
  """GuidanceParams of `config.guidance` with w = `weights` (a scalar or [K]); the rest are scalars."""
  g, d = config.guidance, config.diffusion
  return guidance.GuidanceParams(
      w=weights, logsnr_lo=d.logsnr_min if g.logsnr_lo is None else g.logsnr_lo,
      logsnr_hi=d.logsnr_max if g.logsnr_hi is None else g.logsnr_hi, rescale=g.rescale,
      percentile=g.percentile, apg_eta=g.apg_eta,
      apg_norm_cap=float('inf') if g.apg_norm_cap is None else g.apg_norm_cap, apg_beta=g.apg_beta,
      step_u=g.step_u)


def method(config):
  return guidance.get_method(config.guidance.method, schedule=config.guidance.schedule)


def guide_state_per_step(config):
  """Whether the sampler advances a guidance state once per step (Heun with sampling.guide_state=step);
  the other solvers make one evaluation per step, so for them the setting changes nothing."""
  return config.sampling.sampler == 'heun' and config.sampling.guide_state == 'step'


def sampler_kwargs(config):
  """The static sampler arguments that `config.sampling`, `config.guidance` and `config.diffusion` describe."""
  s, d = config.sampling, config.diffusion
  return dict(
      image_shape=data.image_shape(config.data), num_steps=num_steps(config),
      null_label=config.data.num_classes, clip_x=s.clip_x, method=method(config), solver=s.sampler,
      grid=s.grid, solver_params=solvers.SolverParams(
          variance_interp=s.variance_interp, eta=s.eta, guide_state_per_step=guide_state_per_step(config)),
      logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max)


def evaluations(config, w=1.0):
  """Network evaluations per image of one sample (`samplers.Evaluations`: main, ref, total)."""
  d = config.diffusion
  return samplers.count_evaluations(
      solver=config.sampling.sampler, method=method(config), num_steps=num_steps(config),
      grid=config.sampling.grid, params=guidance_params(config, w), logsnr_min=d.logsnr_min,
      logsnr_max=d.logsnr_max)


def describe_evaluations(config):
  """One line: sampler, T and the NFE per image, e.g. 'ddim T=16: NFE 30 per image (15 + 15 guiding)'."""
  nfe = evaluations(config)
  per_step = guide_state_per_step(config)
  return (f'{config.sampling.sampler} T={num_steps(config)} ({config.sampling.grid} grid), '
          f'{config.guidance.method}{" (guidance state per step)" if per_step else ""}: '
          f'NFE {nfe.total} per image ({nfe.main} main + {nfe.ref} guiding)')


def make_sample_fn(model, config, mesh, *, guide=None):
  """jit(params, key, labels [B], example_ids [B], weights [K]) → x̂ [K, B, H, W, C] in [−1, 1].

  guide: (guide model, guide params) for autoguidance; its params are an argument of the program,
  bound here, so the callers' signature is the same with and without a guide.
  """
  kwargs = sampler_kwargs(config)
  shared = guidance_params(config)
  if guide is None and config.guidance.method == 'autoguidance':
    # Callers without a guide (training previews) show CFG with the main network's own ∅ branch;
    # `sample` and `eval` load the guide (cfg.trained.make_sample_fn) and never take this path.
    print('note: no guide network here; sampling with guidance.method=cfg instead of autoguidance.',
          flush=True)
    kwargs['method'] = guidance.get_method('cfg')

  def sample(params, key, labels, example_ids, weights, guide_params):
    chunks = functools.partial(samplers.in_chunks, max_batch=config.sampling.max_network_batch,
                               devices=mesh.devices.size, lanes=weights.shape[0])
    denoise = chunks(functools.partial(model.apply, params))
    guide_denoise = None if guide is None else chunks(functools.partial(guide[0].apply, guide_params))
    return samplers.sample_sweep(
        functools.partial(samplers.sample, denoise, guide_denoise=guide_denoise),
        params=shared._replace(w=weights), key=key, labels=labels, example_ids=example_ids,
        **kwargs)

  rows, replicated = parallel.batch_sharded(mesh), parallel.replicated(mesh)
  jitted = parallel.jit(
      sample, in_shardings=(replicated, replicated, rows, rows, replicated, replicated),
      out_shardings=NamedSharding(mesh, P(None, parallel.DATA_AXIS)))
  return _BoundGuide(jitted, None if guide is None else guide[1])


class _BoundGuide:
  """fn(params, key, labels, example_ids, weights) with the guide's params bound; `lower` too."""

  def __init__(self, jitted, guide_params):
    self.jitted, self.guide_params = jitted, guide_params

  def __call__(self, params, key, labels, example_ids, weights):
    return self.jitted(params, key, labels, example_ids, weights, self.guide_params)

  def lower(self, params, key, labels, example_ids, weights):
    return self.jitted.lower(params, key, labels, example_ids, weights, self.guide_params)


_BALANCED_STREAM = 0x62616C  # folded into the seed's key: balanced labels never reuse a uniform draw


def labels_for(example_ids, *, num_classes, seed, protocol='uniform'):
  """The class of each example, a function of (seed, example id, protocol) only.

  uniform:  y_i ~ U{0 … C − 1} from fold_in(key(seed), i).
  balanced: y_i = π_b(i mod C) with b = ⌊i / C⌋ and π_b a random permutation of the C classes drawn
            from fold_in(fold_in(key(seed), stream), b): ids bC … bC + C − 1 hold every class once.
  """
  key = jax.random.PRNGKey(seed)
  ids = jnp.asarray(example_ids)
  if protocol == 'uniform':
    draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, num_classes))
    return np.asarray(draw(ids), np.int32)
  if protocol != 'balanced':
    raise ConfigError(f'config.sampling.labels={protocol!r} is unknown; use one of {LABEL_PROTOCOLS}.')
  stream = jax.random.fold_in(key, _BALANCED_STREAM)
  permutation = jax.vmap(lambda b: jax.random.permutation(jax.random.fold_in(stream, b), num_classes))
  return np.asarray(permutation(ids // num_classes)[jnp.arange(ids.size), ids % num_classes], np.int32)


def sample_batches(sample_fn, params, *, mesh, config, weights, num_samples, first=0, labels=None):
  """Yields (example_ids, labels, uint8 images [K, B, H, W, C]) for examples first … num_samples − 1.

  Each process gets the full host copy of every batch (small next to the network's work).
  """
  batch_size = config.sampling.batch_size
  parallel.check_divisible(batch_size, mesh, 'config.sampling.batch_size')
  key = jax.random.PRNGKey(config.sampling.seed)
  weights = jnp.asarray(weights, jnp.float32)
  for start in range(first, num_samples, batch_size):
    ids = np.arange(start, start + batch_size)  # the last batch is padded, then cut
    batch_labels = (labels_for(ids, num_classes=config.data.num_classes, seed=config.sampling.seed,
                               protocol=config.sampling.labels)
                    if labels is None else _batch_rows(labels, start, batch_size))
    rows = _local_rows(batch_labels, mesh), _local_rows(ids, mesh)
    images = np.concatenate([data.to_uint8(parallel.to_host(sample_fn(params, key, *rows, chunk)))[:count]
                             for chunk, count in weight_programs(weights, config.eval.weights_per_program)])
    # Image row r was made from row r of the device arrays, which need not be row r of the host's (a
    # mesh whose devices are not grouped by process places a process's rows elsewhere): read them back.
    batch_labels, ids = (np.asarray(x) for x in parallel.to_host(rows))
    order = np.argsort(ids, kind='stable')[:min(batch_size, num_samples - start)]
    yield ids[order], batch_labels[order], images[:, order]


def weight_programs(weights, per_program):
  """(chunk [P], count) of weights [K] in programs of P = per_program weights (None: all K in one): the
  last chunk is padded with its last weight (count says how many are real), so one program serves all."""
  per = len(weights) if per_program is None else per_program
  if per < 1:
    raise ConfigError(f'config.eval.weights_per_program={per_program} must be a positive number or None.')
  for start in range(0, len(weights), per):
    chunk = weights[start:start + per]
    yield jnp.concatenate([chunk, jnp.repeat(chunk[-1:], per - len(chunk))]), len(chunk)


def _batch_rows(labels, start, batch_size):
  """labels[start : start + batch_size], padded with label 0 past the end (those rows are cut)."""
  rows = np.asarray(labels, np.int32)[start:start + batch_size]
  return np.concatenate([rows, np.zeros(batch_size - len(rows), np.int32)])


def _local_rows(array, mesh):
  """The global array assembled from this process's rows (all rows when there is one process)."""
  n = jax.process_count()
  rows = len(array) // n
  local = array[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  return jax.make_array_from_process_local_data(parallel.batch_sharded(mesh), local)
