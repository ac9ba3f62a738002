"""The training state: its layout, a fresh one from the config, and the restore-or-init of a workdir.

Training (`cfg/train.py`) and the loaders of trained models (`cfg/trained.py`) share it, so no mode
reaches into another.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from cfg import data, files, parallel
from cfg.checkpoints import Checkpoints


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  num_skipped: jax.Array  # updates dropped because the loss or gradient was not finite


def init_state(config, model, optimizer):
  """A fresh TrainState from `config.seed` (params and EMA start equal)."""
  rng = jax.random.PRNGKey(config.seed)
  params = model.init(jax.random.fold_in(rng, 0), jnp.zeros((1, *data.image_shape(config.data))),
                      jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=optimizer.init(params), rng=jax.random.fold_in(rng, 1),
                    num_skipped=jnp.zeros((), jnp.int32))


def abstract_state(state_fn, mesh):
  """The TrainState's shapes with replicated shardings, without allocating it."""
  shapes = jax.eval_shape(state_fn)
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_or_init(config, workdir, *, model, optimizer, mesh, step=None):
  """(state, checkpoints): the latest checkpoint in `workdir` (or the one at `step`), else a new state."""
  checkpoints = Checkpoints(files.join(workdir, 'checkpoints'),
                            max_to_keep=config.train.keep_checkpoints)
  state_fn = functools.partial(init_state, config, model, optimizer)
  state, meta = checkpoints.restore_latest(abstract_state(state_fn, mesh), step=step)
  if state is None:
    state = jax.jit(state_fn, out_shardings=parallel.replicated(mesh))()
  elif meta['data_position'] != int(state.step):
    raise ValueError(f'checkpoint step {int(state.step)} and data position {meta["data_position"]} differ.')
  return state, checkpoints
