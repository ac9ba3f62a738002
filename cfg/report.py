"""The frontier report: one Markdown page (and plots) from a collected Grid sweep's results.json.

    python -m cfg.report --results=runs/fm_frontier/frontier/results.json --out=experiments/fashion_mnist/frontier

Every number on the page is read from the collection (`cfg.sweep.collect_grid`), which holds each cell's
rows, its evaluation info (sampler, T, NFE, method, step, samples, labels) and provenance. The page has no
time stamp of its own, so the same results.json gives the same page byte for byte.

Sections: the best distance of every cell (its w, 95% interval and FD∞, NFE per image); the best distance
against NFE per sampler (cfg); guidance methods side by side at equal NFE; the optimal w against the
training step; and where the numbers came from.
"""

import argparse
import io
import json
import math

from cfg import files
from cfg.evaluation import tables

DISTANCE_PREFERENCE = ('fid', 'fd_fmnist', 'fd_dinov2')


def distance_name(rows):
  """The main Fréchet distance of the rows: FID where present, else fd_fmnist, else fd_dinov2."""
  present = {k for row in rows for k in row}
  return next(d for d in DISTANCE_PREFERENCE if d in present)


def best_row(rows, distance):
  """The row of the lowest finite distance (ties: the smaller w)."""
  finite = [row for row in rows if math.isfinite(row[distance])]
  return min(finite, key=lambda row: (row[distance], row['w']))


def cell_summaries(collection):
  """[{cell, sampler, grid, T, nfe, method, step, w*, d, d_lo, d_hi, d_inf}] for every cell, in order."""
  summaries = []
  for label, cell in collection['cells'].items():
    info, rows = cell['info'], cell['rows']
    distance = distance_name(rows)
    best = best_row(rows, distance)
    summaries.append({
        'cell': label, 'sampler': info['sampler'], 'grid': info.get('grid', 'uniform_u'),
        'T': info['num_steps'], 'nfe': info['nfe_per_image'], 'method': info.get('method', 'cfg'),
        'step': info['step'], 'w*': best['w'], 'distance': distance, 'best': best[distance],
        'lo': best.get(f'{distance}_lo'), 'hi': best.get(f'{distance}_hi'),
        'inf': best.get(f'{distance}_inf')})
  return summaries


def _interval(s):
  return '' if s['lo'] is None else f'[{tables.format_value(s["lo"])}, {tables.format_value(s["hi"])}]'


def _table(header, lines):
  return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
                   + ['| ' + ' | '.join(str(x) for x in line) + ' |' for line in lines])


def _summary_line(s, *keys):
  return [s[k] for k in keys] + [tables.format_value(s['w*']), tables.format_value(s['best']), _interval(s),
                                 tables.format_value(s['inf']) if s['inf'] is not None else '']


def render(collection):
  """The report page (Markdown text) of a collected Grid."""
  summaries = cell_summaries(collection)
  distance = summaries[0]['distance']
  score = ['w*', f'best {distance}', '95% interval', f'{distance} FD∞']
  steps = sorted({s['step'] for s in summaries})
  final = steps[-1]
  at_final = [s for s in summaries if s['step'] == final]
  cfg_cells = sorted((s for s in at_final if s['method'] == 'cfg'), key=lambda s: (s['sampler'], s['nfe']))
  methods = sorted((s for s in at_final if s['method'] != 'cfg'), key=lambda s: (s['nfe'], s['sampler'], s['method']))
  equal_nfe = {(s['sampler'], s['nfe']) for s in methods}
  baselines = [s for s in cfg_cells if (s['sampler'], s['nfe']) in equal_nfe]
  by_setting = {}  # cfg cells of one sampler, grid and NFE at several training steps
  for s in summaries:
    if s['method'] == 'cfg':
      by_setting.setdefault((s['sampler'], s['grid'], s['nfe']), {})[s['step']] = s
  by_step = [s for key in sorted(by_setting) if len(by_setting[key]) > 1
             for _, s in sorted(by_setting[key].items())]
  first = next(iter(collection['cells'].values()))
  parts = [
      '# The guided-sampling frontier',
      '',
      f'{len(summaries)} evaluations of one trained run, {first["info"]["num_samples"]} samples per w, '
      f'labels {first["info"].get("labels", "uniform")}; distance `{distance}` (lower is better) at the best '
      'w of each cell, with its 95% bootstrap interval and FD∞. NFE is network evaluations per image '
      '(a guided call counts 2).',
      '',
      f'## Best {distance} against NFE (cfg, step {final})',
      '',
      _table(['sampler', 'grid', 'T', 'NFE', *score], [_summary_line(s, 'sampler', 'grid', 'T', 'nfe')
                                                       for s in cfg_cells]),
      '',
      '## Guidance methods at equal NFE',
      '',
      _table(['method', 'sampler', 'NFE', *score],
             [_summary_line(s, 'method', 'sampler', 'nfe') for s in baselines + methods]),
      '',
  ]
  if by_step:
    parts += ['## Optimal w against training', '',
              _table(['sampler', 'NFE', 'step', *score], [_summary_line(s, 'sampler', 'nfe', 'step')
                                                           for s in by_step]), '']
  commits = sorted({(cell.get('provenance') or {}).get('commit') or 'unknown' for cell in collection['cells'].values()})
  machines = sorted({json.dumps((cell.get('provenance') or {}).get('machine'), sort_keys=True)
                     for cell in collection['cells'].values()})
  parts += ['## Provenance', '',
            f'Evaluations made at commit(s) {", ".join(commits)} on {len(machines)} machine description(s): '
            + '; '.join(machines) + '. Each cell\'s command, wall time and evaluator fingerprints are in the '
            'collected results.json.', '']
  return '\n'.join(parts)


def plot_distance_against_nfe(path, collection):
  """best distance (y) against NFE per image (x), one line per sampler (cfg cells at the last step)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  summaries = cell_summaries(collection)
  final = max(s['step'] for s in summaries)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for sampler in sorted({s['sampler'] for s in summaries}):
    points = sorted((s['nfe'], s['best']) for s in summaries
                    if s['sampler'] == sampler and s['method'] == 'cfg' and s['step'] == final)
    ax.plot(*zip(*points), marker='o', label=sampler)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('NFE per image')
  ax.set_ylabel(f'best {summaries[0]["distance"]} over w')
  ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120, metadata={'Software': None})
  plt.close(fig)
  files.write_bytes(path, buffer.getvalue())


def write_report(results, out_dir):
  """report.md and distance_vs_nfe.png in `out_dir` from a collected Grid's results.json; returns the page."""
  collection = files.read_json(results)
  page = render(collection)
  files.write_text(files.join(out_dir, 'report.md'), page)
  plot_distance_against_nfe(files.join(out_dir, 'distance_vs_nfe.png'), collection)
  return page


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--results', required=True, help='results.json of `sweep.py --sweep=frontier --collect`')
  parser.add_argument('--out', required=True, help='folder for report.md and its plots')
  args = parser.parse_args(argv)
  print(write_report(args.results, args.out))


if __name__ == '__main__':
  main()
