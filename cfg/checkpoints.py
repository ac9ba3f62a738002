"""Orbax checkpoints of a run: train state (params, EMA, optimizer, step, rng), data position, config.

Saves are asynchronous and atomic (orbax writes a temporary folder and renames it when complete),
so a run killed during a write leaves the previous checkpoints intact. Restoring walks back from
the newest step and skips one that cannot be read, saying so. The directory may be local or any URL
orbax and `cfg.files` support (gs://…). Orbax's zarr chunks carry no checksum
(a garbled byte can read back as a wrong value without error), so `meta` stores a word sum of every
leaf and a restored state whose sums differ counts as unreadable. An unreadable checkpoint newer than
the one restored is moved aside (`<directory>_unreadable/<step>`, never deleted): orbax saves only steps
above the newest one it sees, so left in place it would silently refuse every save up to its step.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cfg import files, parallel
from cfg.errors import (CheckpointNotSavedError, MissingInputError, TrainingDivergedError, UserError,
                        WorkdirError)


class CheckpointMismatchError(UserError):
  """The workdir holds checkpoints of another model shape than the config describes."""


class NoReadableCheckpointError(UserError):
  """Every checkpoint in the workdir is damaged; they are kept, nothing is trained over them."""


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


def _word_sum(x):
  """Σ of the leaf's bit patterns as unsigned integers, mod 2³² (exact, so independent of sharding)."""
  x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
  return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)


@jax.jit
def _word_sums(tree):
  return jax.tree.map(_word_sum, tree)


def checksums(tree):
  """{'params.conv_in.kernel': word sum, …} of every leaf of a (possibly multi-process) state."""
  sums = jax.device_get(_word_sums(tree))  # one transfer of all scalars
  return {'.'.join(_key_name(k) for k in path): int(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(sums)}


def all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


class Checkpoints:
  """The checkpoints under `directory` (normally `<workdir>/checkpoints`)."""

  def __init__(self, directory, *, max_to_keep, async_save=True):
    directory = files.path(directory)
    if not files.is_url(directory):
      self._check_writable(os.fspath(directory))
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
    if not os.path.isdir(parent):
      raise WorkdirError(
          f'cannot write checkpoints to {directory}: {parent} is a file, not a folder. '
          'Pass a --workdir that is a folder (or does not exist yet) under a folder you can write to.')
    if not os.access(parent, os.W_OK):
      raise WorkdirError(
          f'cannot write checkpoints to {directory}: {parent} is not writable. '
          'Pass a --workdir you can write to.')

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, state, *, config, data_position, force=False):
    """Saves asynchronously; refuses a state with NaN/Inf so a bad state never reaches disk.

    Raises CheckpointNotSavedError when orbax declines the save, so a run never ends without the
    checkpoint it believes it wrote.
    """
    if not all_finite(state.params) or not all_finite(state.ema_params):
      raise TrainingDivergedError('refusing to save a train state with non-finite parameters; the last '
                                  'checkpoint is intact. Lower config.optim.learning_rate.')
    step = int(state.step)
    saved = self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({'data_position': int(data_position), 'step': step,
                                'checksums': checksums(state)}),
        config=ocp.args.JsonSave(config.to_dict())))
    if not saved:
      raise CheckpointNotSavedError(
          f'the checkpoint at step {step} was not saved: {self.manager.directory} already holds step '
          f'{self.manager.latest_step()}. Is another run writing to this workdir? Nothing was overwritten.')
    return saved

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
        raise MissingInputError(f'no checkpoint at step {step} in {self.manager.directory}; '
                                f'the steps there are {sorted(steps)}.')
      steps = [step]
    unreadable = []
    for candidate in steps:
      try:
        self.check_compatible(candidate, abstract_state)
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        _verify_checksums(restored['state'], restored['meta'])
      except CheckpointMismatchError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        logging.warning('checkpoint at step %d cannot be read (%s: %s); falling back to the one before.',
                        candidate, type(error).__name__, error)
        reason = str(error).split(' See full TensorStore')[0][:200]  # TensorStore appends its whole spec
        print(f'warning: checkpoint at step {candidate} cannot be read ({type(error).__name__}: {reason}); '
              'falling back to the previous one.', flush=True)
        unreadable.append(candidate)
        continue
      self._move_aside(unreadable)
      return restored['state'], restored['meta']
    if steps:
      raise NoReadableCheckpointError(
          f'none of the checkpoints in {self.manager.directory} (steps {sorted(steps)}) can be read; '
          'they were left as they are. Move that folder away to start again from step 0.')
    return None, None

  def _move_aside(self, steps):
    """Renames unreadable step folders to `<directory>_unreadable/<step>[.n]` (process 0; all wait)."""
    if not steps:
      return
    directory = files.path(self.manager.directory)
    aside = directory.with_name(f'{directory.name}_unreadable')
    if parallel.is_writer():
      for step in steps:
        target = files.move_aside(directory / str(step), aside)
        print(f'warning: moved the unreadable checkpoint at step {step} to {target}; '
              'training continues from the one before and saves new ones in its place.', flush=True)
    parallel.sync('cfg.checkpoints.move_aside')
    self.manager.reload()

  def restore_config(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _verify_checksums(state, meta):
  """Raises when a restored leaf's word sum differs from the one saved (checkpoints without sums pass)."""
  saved = meta.get('checksums')
  if saved is None:
    return
  damaged = [name for name, value in checksums(state).items() if saved.get(name) != value]
  if damaged:
    raise ValueError(f'{len(damaged)} array(s) read back differently from how they were saved: '
                     f'{", ".join(damaged[:4])}{" …" if len(damaged) > 4 else ""}')
