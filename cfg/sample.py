"""`launch.py --config.mode=sample`: N guided samples per weight from the latest checkpoint's EMA params.

Writes, per weight w, an ADM-format batch `w<w>.npz` (arr_0 uint8 NHWC, arr_1 labels, through
`cfg.evaluation.adm_io.write_sample_batch`) and a PNG grid under
`<workdir>/samples/<step, sampler, T, N, seed[, method, grid]>/`, and `nfe.json` (network evaluations
per image next to T). Existing files are kept, never overwritten.

Autoguidance loads a second model, the guide, from `guidance.guide_workdir` with its own EMA params;
its architecture comes from the config stored in its checkpoint, and its image shape and class count
must equal the main model's.
"""

import json
import os

import jax
import numpy as np

from cfg import build, generate, parallel
from cfg.checkpoints import Checkpoints
from cfg.config_checks import ConfigError, guidance_weights
from cfg.errors import MissingInputError
from cfg.evaluation import tables
from cfg.evaluation.adm_io import write_sample_batch
from cfg.guidance import scale_from_weight
from cfg.metric_writer import image_grid, save_png


class NoCheckpointError(MissingInputError):
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


def _matching(stored, current):
  """`stored` (a checkpoint's JSON config section) with lists as tuples where `current` has tuples."""
  return {k: tuple(v) if isinstance(v, list) and isinstance(current.get(k), tuple) else v
          for k, v in stored.items() if k in current}


def load_guide(config, mesh):
  """(guide model, guide EMA params, step) for autoguidance, from `guidance.guide_workdir`."""
  g = config.guidance
  workdir = g.guide_workdir
  if not workdir or not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError(f'guidance.method=autoguidance needs a trained guide model: no checkpoints in '
                      f'guidance.guide_workdir={workdir!r}.')
  checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints'), max_to_keep=1)
  step = g.guide_step if g.guide_step is not None else checkpoints.latest_step()
  if step is None:
    raise ConfigError(f'no checkpoints in guidance.guide_workdir={workdir!r}; train the guide first.')
  stored = checkpoints.restore_config(step)
  checkpoints.close()
  for field in ('name', 'image_size', 'num_classes'):
    if stored['data'][field] != config.data[field]:
      raise ConfigError(
          f'the guide in {workdir} was trained on data.{field}={stored["data"][field]!r}, the main model '
          f'on {config.data[field]!r}: autoguidance needs the same images and classes.')
  guide_config = config.copy_and_resolve_references()
  guide_config.model.update(_matching(stored['model'], guide_config.model.to_dict()))
  guide_model, guide_params, step = load_ema_params(guide_config, workdir, mesh, step=step)
  return guide_model, guide_params, step


def make_sample_fn(model, config, mesh):
  """generate.make_sample_fn, with the guide network loaded when the method is autoguidance."""
  guide = None
  if config.guidance.method == 'autoguidance':
    guide_model, guide_params, guide_step = load_guide(config, mesh)
    print(f'autoguidance: guide {config.guidance.guide_workdir} at step {guide_step}', flush=True)
    guide = (guide_model, guide_params)
  return generate.make_sample_fn(model, config, mesh, guide=guide)


def output_dir(config, workdir, step):
  s, g = config.sampling, config.guidance
  name = f'step{step}_{s.sampler}{generate.num_steps(config)}_n{s.num_samples}_seed{s.seed}'
  if g.method != 'cfg':
    name += f'_{g.method}'
  if s.grid != 'uniform_u':
    name += f'_{s.grid}'
  return os.path.join(workdir, 'samples', name)


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
  nfe = generate.evaluations(config)
  print(generate.describe_evaluations(config), flush=True)
  sample_fn = make_sample_fn(model, config, mesh)
  _, labels, images = zip(*generate.sample_batches(
      sample_fn, params, mesh=mesh, config=config, weights=todo,
      num_samples=config.sampling.num_samples))
  labels = np.concatenate(labels)
  images = np.concatenate(images, axis=1)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    _write_nfe(directory, config, nfe)
    for w, per_weight in zip(todo, images):
      path = os.path.join(directory, f'w{w:g}.npz')
      write_sample_batch(path, per_weight, labels)
      order = np.argsort(labels[:100], kind='stable')
      save_png(os.path.join(directory, f'w{w:g}.png'), image_grid(per_weight[:100][order], ncols=10))
      print(f'w={w:g} (scale s=1+w={scale_from_weight(w):g}): {len(labels)} samples → {path}')
  return directory


def _write_nfe(directory, config, nfe):
  info = {'sampler': config.sampling.sampler, 'grid': config.sampling.grid, 'method': config.guidance.method,
          'num_steps': generate.num_steps(config), 'nfe_per_image': nfe.total, 'nfe_main': nfe.main,
          'nfe_guiding': nfe.ref}
  tables.write_text(os.path.join(directory, 'nfe.json'), json.dumps(info, indent=1))
