"""A long evaluation as numbered rounds on disk, so a killed run continues where it stopped.

Each round's arrays go to `round_<i>.npz`, written whole (a kill leaves either the whole file or none),
after `round_<i>.json`: what sampled it (command, commit, machine, date, seconds), so an evaluation that
resumes or only rescores finished rounds still names the code that sampled them (`sampled_by`).
A `manifest.json` records what the rounds are of (settings, the fingerprints of the feature networks'
weights and of the checkpoint's EMA params); a rerun with any of them changed in the same folder is
refused, naming what changed, instead of mixing results. With several processes, process 0 decides which rounds are left and
tells the others (so all enter each collective sampling program together), and only process 0 writes.
"""

import json
import time

from cfg import files, parallel
from cfg.errors import UserError
from cfg.evaluation import provenance


class RoundsMismatchError(UserError, ValueError):
  """The folder holds rounds of a different evaluation."""


def _round_path(directory, index):
  return files.join(directory, f'round_{index:05d}.npz')


def _record_path(directory, index):
  return files.join(directory, f'round_{index:05d}.json')


def open_rounds(directory, manifest):
  """Creates `directory` with `manifest`, or checks that the one there is the same (process 0)."""
  manifest = json.loads(json.dumps(manifest))  # tuples → lists, as they come back from disk

  def check_or_write():
    path = files.join(directory, 'manifest.json')
    if path.exists():
      existing = files.read_json(path)
      if existing != manifest:
        changes = '; '.join(f'{key}: {old!r} there, {new!r} now'
                            for key, old, new in _differences(existing, manifest))
        raise RoundsMismatchError(
            f'{directory} holds rounds of another evaluation ({changes}). Its rounds would mix with '
            'this one\'s: remove that folder or change the settings back; nothing was overwritten.')
    else:
      files.write_json(path, manifest)

  parallel.decided_by_process_zero(check_or_write)
  parallel.sync('cfg.rounds.open')


def _differences(old, new, prefix=''):
  """(dotted key, old value, new value) for every leaf where two JSON dicts differ."""
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      yield from _differences(a, b, f'{prefix}{key}.')
    elif a != b:
      yield f'{prefix}{key}', a, b


def finished_rounds(directory, num_rounds):
  return [i for i in range(num_rounds) if _round_path(directory, i).exists()]


def run_rounds(directory, num_rounds, make_round, *, on_round=None):
  """Runs make_round(i) → {name: array} on every process for each round not yet on disk, in order;
  process 0 writes it. `on_round(i)` is called after round i is safely on disk. Returns the rounds that
  were on disk already (process 0's listing, the same on every process)."""
  done = set(parallel.decided_by_process_zero(lambda: finished_rounds(directory, num_rounds)))
  for index in range(num_rounds):
    if index in done:
      continue
    started = time.time()
    arrays = make_round(index)
    if parallel.is_writer():  # the record first: a round on disk always has one (a kill between redoes both)
      files.write_json(_record_path(directory, index), provenance.provenance(wall_seconds=time.time() - started))
      files.save_npz(_round_path(directory, index), arrays)
    parallel.sync(f'cfg.rounds.{index}')
    if on_round is not None:
      on_round(index)
  return sorted(done)


def load_rounds(directory, num_rounds):
  """{name: list of per-round arrays} of rounds 0 … num_rounds − 1."""
  rounds = {}
  for index in range(num_rounds):
    for name, array in files.load_npz(_round_path(directory, index)).items():
      rounds.setdefault(name, []).append(array)
  return rounds


def round_records(directory, num_rounds):
  """[provenance of the process that sampled round i, or None for a round written before rounds had records]."""
  records = []
  for index in range(num_rounds):
    path = _record_path(directory, index)
    records.append(files.read_json(path) if path.exists() else None)
  return records
