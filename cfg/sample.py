"""`launch.py --config.mode=sample`: N guided samples per weight from the latest checkpoint's EMA params.

Writes, per weight w, an ADM-format batch `w<w>.npz` (arr_0 uint8 NHWC, arr_1 labels) and a PNG grid
under `<workdir>/samples/<step, sampler, T, N, seed>/`. Existing files are kept, never overwritten.
"""

import os

import jax
import numpy as np

from cfg import build, generate, parallel
from cfg.config_checks import guidance_weights
from cfg.guidance import scale_from_weight
from cfg.metric_writer import image_grid, save_png


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoint to sample from."""


def load_ema_params(config, workdir, mesh, *, step=None):
  """(model, EMA params, step) of the newest readable checkpoint in `workdir`, or of `step`."""
  from cfg.train import restore_or_init  # the train module owns the state layout
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise NoCheckpointError(f'no checkpoints in {workdir}; train first: '
                            f'python launch.py --config=<config> --workdir={workdir}')
  state, checkpoints = restore_or_init(config, workdir, model=model, optimizer=optimizer, mesh=mesh,
                                      step=step)
  checkpoints.close()
  if int(state.step) == 0:
    raise NoCheckpointError(f'no checkpoints in {workdir}; train first.')
  return model, state.ema_params, int(state.step)


def output_dir(config, workdir, step):
  s = config.sampling
  return os.path.join(workdir, 'samples',
                      f'step{step}_{s.sampler}{s.num_steps}_n{s.num_samples}_seed{s.seed}')


def run(config, workdir):
  """Samples `config.sampling.num_samples` images at each guidance weight; returns the output folder."""
  mesh = parallel.data_mesh()
  model, params, step = load_ema_params(config, workdir, mesh, step=config.eval.checkpoint_step)
  weights = guidance_weights(config)
  directory = output_dir(config, workdir, step)
  todo = [w for w in weights if not os.path.exists(os.path.join(directory, f'w{w:g}.npz'))]
  for w in sorted(set(weights) - set(todo)):
    print(f'w={w:g}: {directory}/w{w:g}.npz exists; kept as it is.')
  if not todo:
    return directory
  sample_fn = generate.make_sample_fn(model, config, mesh)
  _, labels, images = zip(*generate.sample_batches(
      sample_fn, params, mesh=mesh, config=config, weights=todo,
      num_samples=config.sampling.num_samples))
  labels = np.concatenate(labels)
  images = np.concatenate(images, axis=1)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    for w, per_weight in zip(todo, images):
      path = os.path.join(directory, f'w{w:g}.npz')
      np.savez(path + '.tmp.npz', arr_0=per_weight, arr_1=labels)
      os.replace(path + '.tmp.npz', path)
      order = np.argsort(labels[:100], kind='stable')
      save_png(os.path.join(directory, f'w{w:g}.png'), image_grid(per_weight[:100][order], ncols=10))
      print(f'w={w:g} (scale s=1+w={scale_from_weight(w):g}): {len(labels)} samples → {path}')
  return directory
