"""The committed Fashion-MNIST frontier: its report regenerates byte for byte from its results.json, and
every number in that collection is a row of a committed evaluation's own results.json."""

import glob
import json
import os

import pytest

from cfg import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRONTIER = os.path.join(ROOT, 'experiments', 'fashion_mnist', 'frontier')
REPORTS = sorted(os.path.dirname(path) for path in glob.glob(os.path.join(FRONTIER, '*', 'report.md'))
                 + glob.glob(os.path.join(FRONTIER, 'report.md')))


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_there_is_a_committed_report():
  assert REPORTS, f'no report.md under {FRONTIER}'


@pytest.mark.parametrize('folder', REPORTS, ids=[os.path.relpath(f, FRONTIER) for f in REPORTS])
def test_the_committed_report_regenerates_byte_for_byte(folder, tmp_path):
  table1 = os.path.join(folder, 'table1.json')
  report.write_report(os.path.join(folder, 'results.json'), tmp_path,
                      table1=table1 if os.path.exists(table1) else None)
  with open(os.path.join(folder, 'report.md'), 'rb') as f:
    assert (tmp_path / 'report.md').read_bytes() == f.read()


@pytest.mark.parametrize('folder', REPORTS, ids=[os.path.relpath(f, FRONTIER) for f in REPORTS])
def test_the_collection_is_the_committed_evaluations(folder):
  evaluations = [_read(path) for path in glob.glob(os.path.join(FRONTIER, 'run', 'eval', '*', 'results.json'))]
  for name, cell in _read(os.path.join(folder, 'results.json'))['cells'].items():
    matches = [e for e in evaluations if e['info'] == cell['info'] and e['rows'] == cell['rows']]
    assert matches, f'cell {name}: no committed evaluation under run/eval has its info and rows'


def test_table1_is_the_committed_evaluations():
  """Each job of the committed Table 1 collection (table1.json, read by the report) is the results.json of
  the evaluation committed under table1/<job>/eval/: the same info and rows."""
  table1 = _read(os.path.join(FRONTIER, 'table1.json'))
  assert table1['jobs'], 'table1.json has no jobs'
  for label, job in table1['jobs'].items():
    evaluations = [_read(p) for p in glob.glob(os.path.join(FRONTIER, 'table1', label, 'eval', '*', 'results.json'))]
    assert any(e['info'] == job['info'] and e['rows'] == table1['series'][label] for e in evaluations), (
        f'table1 job {label}: no committed evaluation under table1/{label}/eval has its info and rows')
