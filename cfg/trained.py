"""Trained models from a workdir: a checkpoint's EMA params, and autoguidance's guide network.

Autoguidance loads a second model, the guide, from `guidance.guide_workdir` with its own EMA params;
its architecture comes from the config stored in its checkpoint (not `conv_impl` / `attention_impl`, which
this run chooses), and its image shape and class count must equal the main model's.
"""

from cfg import build, files, generate
from cfg.checkpoints import Checkpoints
from cfg.config_checks import ConfigError
from cfg.errors import MissingInputError
from cfg.train_state import restore_or_init

# config.model fields that choose how the network is computed, not what it computes.
IMPLEMENTATION_FIELDS = ('conv_impl', 'attention_impl')


class NoCheckpointError(MissingInputError):
  """The workdir holds no checkpoint to sample from."""


def load_ema_params(config, workdir, mesh, *, step=None):
  """(model, EMA params, step) of the newest readable checkpoint in `workdir`, or of `step`."""
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  if not files.join(workdir, 'checkpoints').is_dir():
    raise NoCheckpointError(f'no checkpoints in {workdir}; train first: '
                            f'python launch.py --config=<config> --workdir={workdir}')
  state, checkpoints = restore_or_init(config, workdir, model=model, optimizer=optimizer, mesh=mesh,
                                      step=step)
  checkpoints.close()
  if int(state.step) == 0:
    raise NoCheckpointError(f'no checkpoints in {workdir}; train first.')
  return model, state.ema_params, int(state.step)


def _tuples(value):
  """JSON lists back to the tuples the configs use."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def stored_config(workdir, *, step=None):
  """(step, config dict) of the checkpoint at `step` (None: the newest) in `workdir`, JSON lists back as
  tuples; (None, None) when there is none."""
  checkpoints = Checkpoints(files.join(workdir, 'checkpoints'), max_to_keep=1)
  try:
    step = checkpoints.latest_step() if step is None else step
    return (None, None) if step is None else (step, _tuples(checkpoints.restore_config(step)))
  finally:
    checkpoints.close()


def load_guide(config, mesh):
  """(guide model, guide EMA params, step) for autoguidance, from `guidance.guide_workdir`."""
  g = config.guidance
  workdir = g.guide_workdir
  if not workdir or not files.join(workdir, 'checkpoints').is_dir():
    raise ConfigError(f'guidance.method=autoguidance needs a trained guide model: no checkpoints in '
                      f'guidance.guide_workdir={workdir!r}.')
  step, stored = stored_config(workdir, step=g.guide_step)
  if step is None:
    raise ConfigError(f'no checkpoints in guidance.guide_workdir={workdir!r}; train the guide first.')
  for field in ('name', 'image_size', 'num_classes'):
    if stored['data'][field] != config.data[field]:
      raise ConfigError(
          f'the guide in {workdir} was trained on data.{field}={stored["data"][field]!r}, the main model '
          f'on {config.data[field]!r}: autoguidance needs the same images and classes.')
  guide_config = config.copy_and_resolve_references()
  # The guide's architecture is the stored one; who runs its convolutions and attention is this run's choice
  # (a guide trained with conv_impl=onednn on a CPU samples on a GPU too).
  guide_config.model.update({k: v for k, v in stored['model'].items()
                             if k in guide_config.model and k not in IMPLEMENTATION_FIELDS})
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
