"""Orbax checkpoints of a run: train state (params, EMA, optimizer, step, rng), data position, config.

Saves are asynchronous and atomic (orbax writes a temporary folder and renames it when complete),
so a run killed during a write leaves the previous checkpoints intact. Restoring walks back from
the newest step and skips one that cannot be read, saying so.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """The workdir holds checkpoints of another model shape than the config describes."""


def _key_name(key):
  for field in ('key', 'name', 'idx'):
    if hasattr(key, field):
      return str(getattr(key, field))
  return str(key)


def _shapes(tree):
  """{'params.conv_in.kernel': shape, …}: the same names for a live state and orbax's metadata."""
  return {'.'.join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _describe_mismatch(saved, wanted):
  lines = []
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key) != wanted.get(key):
      lines.append(f'  {key}: checkpoint {saved.get(key)}, config {wanted.get(key)}')
  shown = '\n'.join(lines[:8]) + ('\n  …' if len(lines) > 8 else '')
  return shown


def all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


class Checkpoints:
  """The checkpoints under `directory` (normally `<workdir>/checkpoints`)."""

  def __init__(self, directory, *, max_to_keep, async_save=True):
    directory = os.path.abspath(directory)
    self._check_writable(directory)
    self.manager = ocp.CheckpointManager(
        directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save))

  @staticmethod
  def _check_writable(directory):
    parent = directory
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
      raise PermissionError(
          f'cannot write checkpoints to {directory}: {parent} is not writable. '
          'Pass a --workdir you can write to.')

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, state, *, config, data_position, force=False):
    """Saves asynchronously; refuses a state with NaN/Inf so a bad state never reaches disk."""
    if not all_finite(state.params) or not all_finite(state.ema_params):
      raise FloatingPointError('refusing to save a train state with non-finite parameters.')
    step = int(state.step)
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'data_position': int(data_position), 'step': step}),
        config=ocp.args.JsonSave(config.to_dict())))

  def check_compatible(self, step, abstract_state):
    """Raises CheckpointMismatchError when the saved state's shapes differ from the config's."""
    metadata = self.manager.item_metadata(step)['state']
    saved = _shapes(getattr(metadata, 'tree', metadata))
    wanted = _shapes(abstract_state)
    if saved != wanted:
      raise CheckpointMismatchError(
          f'the checkpoints in {self.manager.directory} were written by a different model than the '
          f'config describes:\n{_describe_mismatch(saved, wanted)}\n'
          'Use the config that trained them, or a new --workdir. Nothing was overwritten.')

  def restore_latest(self, abstract_state, *, step=None):
    """(state, meta) of the newest readable checkpoint (or of `step`), or (None, None) when there is none.

    `abstract_state` holds jax.ShapeDtypeStruct leaves with the shardings wanted now, so a
    checkpoint written on 8 devices restores on 1 and the other way round.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f'no checkpoint at step {step} in {self.manager.directory}; '
                                f'the steps there are {sorted(steps)}.')
      steps = [step]
    if steps:
      self.check_compatible(steps[0], abstract_state)
    for candidate in steps:
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as error:  # pylint: disable=broad-except
        logging.warning('checkpoint at step %d cannot be read (%s: %s); falling back to the one before.',
                        candidate, type(error).__name__, error)
        print(f'warning: checkpoint at step {candidate} cannot be read ({type(error).__name__}); '
              'falling back to the previous one.', flush=True)
        continue
      return restored['state'], restored['meta']
    return None, None

  def restore_config(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
