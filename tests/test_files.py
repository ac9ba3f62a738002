"""cfg/files.py on a local folder and on gs:// (the GCS emulator of tests/gcs_emulator.py): whole-file writes,
.npz round trips, recursive listing, and moving a folder aside without losing anything."""

import os

import numpy as np
import pytest
from etils.epath import gpath

from cfg import files
from tests import gcs_emulator


@pytest.fixture(scope='module', params=['local', 'gs'])
def root(request, tmp_path_factory):
  if request.param == 'local':
    yield str(tmp_path_factory.mktemp('files'))
    return
  with gcs_emulator.running() as port, pytest.MonkeyPatch.context() as patch:
    for name, value in gcs_emulator.environment(port).items():
      patch.setenv(name, value)
    patch.setattr(gpath, '_is_tf_installed', lambda: False)  # as EPATH_USE_TF=false does in a new process
    yield f'gs://{gcs_emulator.BUCKET}/files'


def test_paths_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
  assert str(files.path('gs://bucket/run')) == 'gs://bucket/run'
  assert str(files.join('gs://bucket/run', 'eval', 'table.md')) == 'gs://bucket/run/eval/table.md'
  monkeypatch.chdir(tmp_path)
  assert str(files.path('runs/fm')) == os.path.join(str(tmp_path), 'runs/fm')


def test_writes_and_npz_round_trips(root):
  files.write_text(files.join(root, 'a', 'note.txt'), 'first')
  files.write_text(files.join(root, 'a', 'note.txt'), 'second')  # replaced whole
  assert files.path(root).joinpath('a', 'note.txt').read_text() == 'second'
  files.write_json(files.join(root, 'a', 'value.json'), {'w': [0.0, 1.5]})
  assert files.read_json(files.join(root, 'a', 'value.json')) == {'w': [0.0, 1.5]}
  arrays = {'images': np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1), 'labels': np.array([3, 7])}
  files.save_npz(files.join(root, 'a', 'batch.npz'), arrays)  # the exact name, no '.npz' appended
  loaded = files.load_npz(files.join(root, 'a', 'batch.npz'))
  assert sorted(loaded) == ['images', 'labels'] and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
  with files.open_npz(files.join(root, 'a', 'batch.npz')) as npz:
    assert np.array_equal(npz['labels'], [3, 7])
  assert not any(p.name.endswith('.partial') for p in files.path(root).joinpath('a').iterdir())


def test_files_under_and_move_aside_keep_every_file(root):
  folder = files.join(root, 'checkpoints', '12')
  for name in ('meta/a.json', 'state/d/0', 'state/d/1', 'state/manifest'):
    files.write_text(folder / name, name)
  listed = sorted(str(p)[len(str(folder)) + 1:] for p in files.files_under(folder))
  assert listed == ['meta/a.json', 'state/d/0', 'state/d/1', 'state/manifest']
  aside = files.join(root, 'checkpoints_unreadable')
  moved = files.move_aside(folder, aside)
  assert str(moved) == str(aside / '12') and not folder.exists()
  assert sorted(str(p)[len(str(moved)) + 1:] for p in files.files_under(moved)) == listed
  assert (moved / 'state' / 'd' / '1').read_text() == 'state/d/1'
  # A second unreadable step 12 (another fallback later) goes beside the first, which stays.
  files.write_text(folder / 'meta' / 'a.json', 'again')
  again = files.move_aside(folder, aside)
  assert again.name.startswith('12.') and (moved / 'meta' / 'a.json').read_text() == 'meta/a.json'
