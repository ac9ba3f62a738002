"""Guided sampling of a trained model, sharded over every device, for a vector of guidance weights.

Example i of a run always gets label `labels_for(i)` and noise from fold_in(key, i), so the images
do not depend on the batch size or the number of devices, and every weight sees the same noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cfg import data, parallel, samplers
from cfg.evaluation.adm_io import to_uint8


def sampler_kwargs(config):
  """The static sampler arguments that `config.sampling` and `config.diffusion` describe."""
  s, d = config.sampling, config.diffusion
  kwargs = dict(
      image_shape=data.image_shape(config.data),
      num_steps=s.num_steps, null_label=config.data.num_classes, clip_x=s.clip_x,
      logsnr_min=d.logsnr_min, logsnr_max=d.logsnr_max)
  if s.sampler == 'ancestral':
    kwargs['variance_interp'] = s.variance_interp
  return kwargs


def make_sample_fn(model, config, mesh):
  """jit(params, key, labels [B], example_ids [B], weights [K]) → x̂ [K, B, H, W, C] in [−1, 1]."""
  sampler = samplers.get_sampler(config.sampling.sampler)
  kwargs = sampler_kwargs(config)

  def sample(params, key, labels, example_ids, weights):
    denoise = functools.partial(model.apply, params)
    return samplers.sample_sweep(
        functools.partial(sampler, denoise), guidance_weights=weights, key=key, labels=labels,
        example_ids=example_ids, **kwargs)

  rows = parallel.batch_sharded(mesh)
  return jax.jit(sample, in_shardings=(parallel.replicated(mesh), parallel.replicated(mesh), rows, rows,
                                       parallel.replicated(mesh)),
                 out_shardings=NamedSharding(mesh, P(None, parallel.DATA_AXIS)))


def labels_for(example_ids, *, num_classes, seed):
  """Uniform random class of each example, a function of (seed, example id) only."""
  key = jax.random.PRNGKey(seed)
  draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, num_classes))
  return np.asarray(draw(jnp.asarray(example_ids)), np.int32)


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
    batch_labels = (labels_for(ids, num_classes=config.data.num_classes, seed=config.sampling.seed)
                    if labels is None else np.resize(np.asarray(labels, np.int32), batch_size))
    x = sample_fn(params, key, _local_rows(batch_labels, mesh), _local_rows(ids, mesh), weights)
    images = to_uint8(parallel.to_host(x))
    keep = min(batch_size, num_samples - start)
    yield ids[:keep], batch_labels[:keep], images[:, :keep]


def _local_rows(array, mesh):
  """The global array assembled from this process's rows (all rows when there is one process)."""
  n = jax.process_count()
  rows = len(array) // n
  local = array[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  return jax.make_array_from_process_local_data(parallel.batch_sharded(mesh), local)
