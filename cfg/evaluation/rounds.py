"""A long evaluation as numbered rounds on disk, so a killed run continues where it stopped.

Each round's arrays go to `round_<i>.npz`, written to a temporary name and renamed when complete
(a kill leaves either the whole file or none). A `manifest.json` records what the rounds are of;
a rerun with other settings in the same folder is refused instead of mixing results.
"""

import json
import os

import numpy as np


class RoundsMismatchError(ValueError):
  """The folder holds rounds of a different evaluation."""


def _round_path(directory, index):
  return os.path.join(directory, f'round_{index:05d}.npz')


def open_rounds(directory, manifest):
  """Creates `directory` with `manifest`, or checks that the one there is the same."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, 'manifest.json')
  manifest = json.loads(json.dumps(manifest))  # tuples → lists, as they come back from disk
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)
    if existing != manifest:
      raise RoundsMismatchError(
          f'{directory} holds rounds of another evaluation ({existing}); this one is {manifest}. '
          'Remove that folder or change the settings back; nothing was overwritten.')
    return
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)


def finished_rounds(directory, num_rounds):
  return [i for i in range(num_rounds) if os.path.exists(_round_path(directory, i))]


def run_rounds(directory, num_rounds, make_round, *, on_round=None):
  """Runs make_round(i) → {name: array} for each round not yet on disk, in order; returns
  `load_rounds` of all of them. `on_round(i)` is called after round i is safely on disk."""
  for index in range(num_rounds):
    path = _round_path(directory, index)
    if os.path.exists(path):
      continue
    arrays = make_round(index)
    np.savez(path + '.tmp.npz', **arrays)
    os.replace(path + '.tmp.npz', path)
    if on_round is not None:
      on_round(index)
  return load_rounds(directory, num_rounds)


def load_rounds(directory, num_rounds):
  """{name: list of per-round arrays} of rounds 0 … num_rounds − 1."""
  rounds = {}
  for index in range(num_rounds):
    with np.load(_round_path(directory, index)) as npz:
      for name in npz.files:
        rounds.setdefault(name, []).append(npz[name])
  return rounds
