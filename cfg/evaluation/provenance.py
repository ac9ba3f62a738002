"""What made a result: command, commit (and whether the tree differed), machine, wall time; fingerprints.

Recorded in every results.json (evaluations and collected sweep tables). The command is this process's
own argv, recorded as it was run (nothing here reads flags to decide anything).
"""

import datetime
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys

import jax

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git(*args):
  """stdout of `git <args>` in this repository, or None where git or the repository is absent."""
  try:
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True,
                          cwd=REPOSITORY_ROOT).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def machine():
  """Device kind and count, process count, backend, host, CPUs, jax version."""
  return {'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
          'process_count': jax.process_count(), 'backend': jax.default_backend(),
          'host': platform.node(), 'cpus': os.cpu_count(), 'jax': jax.__version__}


@functools.cache
def code_version():
  """(commit, tree_dirty) of the code this process imported, read once, when this module is imported.

  A results.json is written at the end of a run that may take an hour; a commit landing meanwhile must not
  relabel the code that ran (tree_dirty: tracked files differed from that commit)."""
  changed = git('status', '--porcelain', '--untracked-files=no')
  return git('rev-parse', 'HEAD'), (bool(changed) if changed is not None else None)


def provenance(*, wall_seconds):
  """{command, commit, tree_dirty, date, machine, wall_seconds} of this process."""
  commit, dirty = code_version()
  return {
      'command': shlex.join([os.path.basename(sys.executable)] + sys.argv),
      'commit': commit,
      'tree_dirty': dirty,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': machine(),
      'wall_seconds': round(wall_seconds, 1),
  }


def json_fingerprint(value):
  """sha256 of a JSON-ready value (keys sorted)."""
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


code_version()  # at import: the code that runs is the code of this moment
