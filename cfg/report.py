"""The frontier report: one Markdown page (and plots) from a collected Grid sweep's results.json.

    python -m cfg.report --results=runs/fm_frontier/frontier/results.json \
        --table1=runs/fm_p_uncond/p_uncond/results.json --out=experiments/fashion_mnist/frontier

Every number on the page is read from the collection (`cfg.sweep.collect_grid`), which holds each cell's
rows, its evaluation info (sampler, T, NFE, method, step, samples, labels) and provenance. The page has no
time stamp of its own, so the same results.json gives the same page byte for byte.

Sections: the best distance against NFE per sampler (cfg, with its w, 95% interval and FD∞); guidance
methods side by side at equal NFE; the optimal w against the training step; Table 2's analogue (the
ancestral sampler's distance and score at every w and T); Table 1's analogue from a p_uncond sweep
(`--table1`, training seeds side by side); findings read off those
tables; the sample grid of every cell at its best w; and where the numbers came from. Plots:
distance_vs_nfe.png and tradeoff_methods.png (distance against score over w, one line per method).
"""

import argparse
import io
import json

from cfg import files
from cfg.evaluation import tables

def cell_summaries(collection):
  """[{cell, sampler, grid, T, nfe, method, step, w*, d, d_lo, d_hi, d_inf}] for every cell, in order."""
  summaries = []
  for label, cell in collection['cells'].items():
    info, rows = cell['info'], cell['rows']
    distance = tables.main_distance(rows)
    best = tables.best_row(rows, distance)
    summaries.append({
        'cell': label, 'sampler': info['sampler'], 'grid': info.get('grid', 'uniform_u'),
        'T': info['num_steps'], 'nfe': info['nfe_per_image'],
        'method': info.get('method', 'cfg') + (' (state per step)' if info.get('guide_state') == 'step' else ''),
        'step': info['step'], 'w*': best['w'], 'distance': distance, 'best': best[distance],
        'lo': best.get(f'{distance}_lo'), 'hi': best.get(f'{distance}_hi'),
        'inf': best.get(f'{distance}_inf'), 'samples': cell.get('samples'),
        'rows': {row['w']: row for row in rows}})
  return summaries


def _base_method(summary):
  """'apg' for 'apg (state per step)': the method a variant belongs to."""
  return summary['method'].split(' (')[0]


def cfg_by_setting(summaries):
  """{(sampler, grid, NFE): {step: summary}}: the cfg cells of one setting at each training step."""
  by_setting = {}
  for s in summaries:
    if s['method'] == 'cfg':
      by_setting.setdefault((s['sampler'], s['grid'], s['nfe']), {})[s['step']] = s
  return by_setting


def _interval(s):
  return '' if s['lo'] is None else f'[{tables.format_value(s["lo"])}, {tables.format_value(s["hi"])}]'


def _table(header, lines):
  return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
                   + ['| ' + ' | '.join(str(x) for x in line) + ' |' for line in lines])


def _summary_line(s, *keys):
  return [s[k] for k in keys] + [tables.format_value(s['w*']), tables.format_value(s['best']), _interval(s),
                                 tables.format_value(s['inf']) if s['inf'] is not None else '']


def render(collection, table1=None):
  """The report page (Markdown text) of a collected Grid (and of a collected training Sweep over
  p_uncond, `table1`, for Table 1's analogue and finding (f))."""
  summaries = cell_summaries(collection)
  distance = summaries[0]['distance']
  score = ['w*', f'best {distance}', '95% interval', f'{distance} FD∞']
  steps = sorted({s['step'] for s in summaries})
  final = steps[-1]
  at_final = [s for s in summaries if s['step'] == final]
  # One line per setting: a checkpoint cell at the last step is the same evaluation as its plain cell.
  cfg_cells = sorted({(s['sampler'], s['grid'], s['T'], s['nfe']): s for s in at_final
                      if s['method'] == 'cfg'}.values(), key=lambda s: (s['sampler'], s['nfe']))
  methods = sorted((s for s in at_final if s['method'] != 'cfg'), key=lambda s: (s['nfe'], s['sampler'], s['method']))
  equal_nfe = {(s['sampler'], s['nfe']) for s in methods}
  baselines = [s for s in cfg_cells if (s['sampler'], s['nfe']) in equal_nfe]
  by_setting = cfg_by_setting(summaries)
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
  ancestral = [s for s in cfg_cells if s['sampler'] == 'ancestral']
  if len(ancestral) > 1:
    parts += [f"## Table 2's analogue: the paper's sampler against T (cfg, step {final})", '',
              'Algorithm 2 (ancestral, v of the config) at each T the sweep ran: the distance with its 95% '
              'interval, then the Inception-style score, at every w (the paper\'s Table 2 has T = 128, 256, 1024).',
              '', table2_analogue(ancestral), '']
  if table1 is not None:
    seeds = sorted({job['seed'] for job in table1['jobs'].values()})
    info = next(iter(table1['jobs'].values()))['info']
    parts += ["## Table 1's analogue: p_uncond (one training run per value and seed)", '',
              f'{info.get("sampler", "?")} sampler, T = {info.get("num_steps", "?")}, {info.get("num_samples", "?")} '
              f'samples per w, labels {info.get("labels", "uniform")}, step {info.get("step", "?")}, training seeds '
              f'{", ".join(str(seed) for seed in seeds)}. With one seed a distance carries its 95% interval; with '
              'several, their mean and then each seed\'s.', '', table1_analogue(table1), '']
  lines = findings(summaries) + ([finding_f(table1)] if table1 is not None else [])
  parts += ['## Findings', '', *(f'- {line}' for line in lines), '']
  with_samples = [s for s in summaries if s['samples']]
  if with_samples:
    parts += ['## Samples at the optimum', '',
              'The first 100 samples (10 per class, a row per class) of each cell at its best w.', '',
              _table(['cell', 'step', 'w*', 'samples'],
                     [[s['cell'], s['step'], tables.format_value(s['w*']), f'![{s["cell"]}]({s["samples"]})']
                      for s in with_samples]), '']
  parts += ['## Provenance', '',
            f'Evaluations made at {_commits_and_machines(collection["cells"].values())}. Each cell\'s command, '
            'wall time and evaluator fingerprints are in the collected results.json.', '']
  if table1 is not None:
    parts[-1:-1] = ['', f'Table 1\'s analogue: evaluations made at {_commits_and_machines(table1["jobs"].values())}. '
                    'Each job\'s command and wall time are in its collection (`--table1`).']
  return '\n'.join(parts)


def _commits_and_machines(records):
  """'commit(s) a, b on 1 machine description(s): {...}': what the records' provenance names, the processes
  that sampled their rounds (`sampled_by`) as well as those that scored them."""
  provenances = [record.get('provenance') or {} for record in records]
  provenances += [r for p in provenances for r in (p.get('sampled_by') or {}).values() if r is not None]
  commits = sorted({p.get('commit') or 'unknown' for p in provenances})
  machines = sorted({json.dumps(p.get('machine'), sort_keys=True) for p in provenances})
  return f'commit(s) {", ".join(commits)} on {len(machines)} machine description(s): ' + '; '.join(machines)


def table2_analogue(cells):
  """Rows w, columns T (sorted): `distance [lo, hi]` at each T, then the score at each T."""
  cells = sorted(cells, key=lambda s: s['T'])
  distance = cells[0]['distance']
  score = 'is' if 'is' in next(iter(cells[0]['rows'].values())) else 'is_fmnist'
  weights = sorted(set.intersection(*(set(s['rows']) for s in cells)))
  def at(s, w, key):
    row = s['rows'][w]
    text = tables.format_value(row[key])
    if key == distance and f'{key}_lo' in row:
      text += f' [{tables.format_value(row[key + "_lo"])}, {tables.format_value(row[key + "_hi"])}]'
    return text
  return _table(['w', *(f'{distance} T={s["T"]}' for s in cells), *(f'{score} T={s["T"]}' for s in cells)],
                [[tables.format_value(w), *(at(s, w, distance) for s in cells), *(at(s, w, score) for s in cells)]
                 for w in weights])


def _seed_runs(table1):
  """{value: [(seed, rows)]} of a collected training Sweep (p_uncond × seeds), values and seeds sorted."""
  runs = {}
  for label, job in table1['jobs'].items():
    runs.setdefault(job['value'], []).append((job['seed'], table1['series'][label]))
  return {value: sorted(runs[value], key=lambda run: run[0]) for value in sorted(runs)}


def table1_analogue(table1):
  """Rows w, a column per swept value: the distance (one seed: with its 95% interval; several: their mean,
  then each seed's in seed order), then the score (mean over seeds)."""
  runs = _seed_runs(table1)
  first = next(iter(runs.values()))[0][1]
  distance = tables.main_distance(first)
  score = 'is' if 'is' in first[0] else 'is_fmnist'
  by_w = {value: [{row['w']: row for row in rows} for _, rows in seeded] for value, seeded in runs.items()}
  weights = sorted(set.intersection(*(set(r) for per_seed in by_w.values() for r in per_seed)))
  def distance_text(per_seed, w):
    values = [r[w][distance] for r in per_seed]
    if len(values) == 1:
      row = per_seed[0][w]
      lo, hi = row.get(f'{distance}_lo'), row.get(f'{distance}_hi')
      interval = '' if lo is None else f' [{tables.format_value(lo)}, {tables.format_value(hi)}]'
      return tables.format_value(values[0]) + interval
    return f'{tables.format_value(sum(values) / len(values))} ({" / ".join(tables.format_value(v) for v in values)})'
  mean_score = lambda per_seed, w: tables.format_value(sum(r[w][score] for r in per_seed) / len(per_seed))
  field = table1['sweep']['field'].rsplit('.', 1)[-1]
  return _table(['w', *(f'{distance} {field}={v}' for v in runs), *(f'{score} {field}={v}' for v in runs)],
                [[tables.format_value(w), *(distance_text(by_w[v], w) for v in runs),
                  *(mean_score(by_w[v], w) for v in runs)] for w in weights])


def finding_f(table1):
  """(f): the best distance over w of the smallest and largest swept value, per seed, and their
  difference of means next to the seed spread (the widest range of one value's seeds)."""
  runs = _seed_runs(table1)
  distance = tables.main_distance(next(iter(runs.values()))[0][1])
  best = {value: [(seed, tables.best_row(rows, distance)) for seed, rows in seeded] for value, seeded in runs.items()}
  mean = {value: sum(row[distance] for _, row in rows) / len(rows) for value, rows in best.items()}
  low, high = min(runs), max(runs)
  def per_seed(value):
    return ', '.join(f'seed {seed}: {tables.format_value(row[distance])} at w = {tables.format_value(row["w"])}'
                     for seed, row in best[value])
  field = table1['sweep']['field'].rsplit('.', 1)[-1]
  line = (f'(f) {field} = {low}: best {distance} {tables.format_value(mean[low])} ({per_seed(low)}); {field} = '
          f'{high}: {tables.format_value(mean[high])} ({per_seed(high)}); difference '
          f'{tables.format_value(mean[high] - mean[low])}')
  spreads = [max(r[distance] for _, r in rows) - min(r[distance] for _, r in rows)
             for rows in best.values() if len(rows) > 1]
  if not spreads:
    return line + ': one seed per value, no seed spread to set it against.'
  spread = max(spreads)
  verdict = 'larger' if abs(mean[high] - mean[low]) > spread else 'not larger'
  return line + (f', {verdict} than the seed spread ({tables.format_value(spread)}, the widest range of one '
                 'value\'s seeds).')


def _fmt(s):
  """'12.3 [11.0, 13.9] (w = 1, NFE 32)': a cell's best distance, its interval, w and NFE."""
  return f'{tables.format_value(s["best"])} {_interval(s)} (w = {tables.format_value(s["w*"])}, NFE {s["nfe"]})'


def _compare(a, b):
  """Whether a's interval lies wholly below, above or overlaps b's."""
  if a['lo'] is None or b['lo'] is None:
    return 'no intervals to compare'
  if a['hi'] < b['lo']:
    return 'lower, the 95% intervals disjoint'
  if a['lo'] > b['hi']:
    return 'higher, the 95% intervals disjoint'
  return 'the 95% intervals overlap: no difference at this sample count'


def findings(summaries):
  """The issue's questions answered from the cells present (each line says which cells it read)."""
  final = max(s['step'] for s in summaries)
  at_final = [s for s in summaries if s['step'] == final]
  cfg_cells = [s for s in at_final if s['method'] == 'cfg']
  lines = []
  for sampler in sorted({s['sampler'] for s in cfg_cells}):
    mine = sorted((s for s in cfg_cells if s['sampler'] == sampler), key=lambda s: s['nfe'])
    if len(mine) < 2:
      continue
    top = mine[-1]
    within = next(s for s in mine if s['best'] <= 1.05 * top['best'])
    lines.append(f'(a) {sampler}: its largest-NFE cell (T = {top["T"]}) gives {_fmt(top)}; the first NFE within '
                 f'5% of it is {within["nfe"]} ({_fmt(within)}).')
  def baseline(s):
    return next((c for c in cfg_cells if (c['sampler'], c['grid'], c['T']) == (s['sampler'], s['grid'], s['T'])),
                None)
  for letter, method in (('b', 'interval'), ('c', 'autoguidance'), ('e', 'apg'), ('e', 'rescale')):
    for s in (s for s in at_final if _base_method(s) == method):
      base = baseline(s)
      if base is None:
        continue
      line = (f'({letter}) {s["method"]} with {s["sampler"]} (T = {s["T"]}): {_fmt(s)} against cfg {_fmt(base)}: '
              f'{_compare(s, base)}')
      if method == 'interval':
        line += f'; it saves {base["nfe"] - s["nfe"]} of cfg\'s {base["nfe"]} NFE per image'
      if letter == 'e':
        w = max(set(s['rows']) & set(base['rows']))
        d = s['distance']
        line += (f'; at the largest w = {tables.format_value(w)}: {tables.format_value(s["rows"][w][d])} '
                 f'against cfg\'s {tables.format_value(base["rows"][w][d])}')
      lines.append(line + '.')
  for (sampler, _, nfe), steps in sorted(cfg_by_setting(summaries).items()):
    if len(steps) > 1:
      lines.append(f'(d) optimal w of cfg with {sampler} at NFE {nfe} against the training step: '
                   + ', '.join(f'step {step}: w = {tables.format_value(s["w*"])}' for step, s in sorted(steps.items()))
                   + '.')
  return lines or ['No cells answer the questions yet.']


def plot_tradeoffs(path, collection):
  """Distance against score over w, one line per guidance method, at the sampler and NFE where the
  methods meet (the setting with the most methods at the last step, a method's variants counted once)."""
  summaries = cell_summaries(collection)
  final = max(s['step'] for s in summaries)
  settings = {}
  for s in summaries:
    if s['step'] == final:
      settings.setdefault((s['sampler'], s['grid'], s['T']), []).append(s)
  methods = lambda cells: len({_base_method(s) for s in cells})  # variants count once
  (sampler, _, steps), chosen = max(settings.items(), key=lambda item: (methods(item[1]), item[0]))
  series = {s['method']: [s['rows'][w] for w in sorted(s['rows'])] for s in chosen}
  tables.tradeoff_plot(path, series, title=f'{sampler}, T = {steps}, step {final}')


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


def write_report(results, out_dir, table1=None):
  """report.md, its plots and its sample grids (copied from beside `results`) in `out_dir` from a collected
  Grid's results.json (and `table1`, a collected p_uncond Sweep's); returns the page."""
  collection = files.read_json(results)
  page = render(collection, None if table1 is None else files.read_json(table1))
  files.write_text(files.join(out_dir, 'report.md'), page)
  plot_distance_against_nfe(files.join(out_dir, 'distance_vs_nfe.png'), collection)
  plot_tradeoffs(files.join(out_dir, 'tradeoff_methods.png'), collection)
  source, target = files.path(results).parent, files.path(out_dir)
  for cell in collection['cells'].values():
    if cell.get('samples') and source / cell['samples'] != target / cell['samples']:
      files.write_bytes(target / cell['samples'], (source / cell['samples']).read_bytes())
  return page


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--results', required=True, help='results.json of `sweep.py --sweep=frontier --collect`')
  parser.add_argument('--table1', help='results.json of `sweep.py --sweep=p_uncond --collect` (Table 1\'s analogue)')
  parser.add_argument('--out', required=True, help='folder for report.md and its plots')
  args = parser.parse_args(argv)
  print(write_report(args.results, args.out, table1=args.table1))


if __name__ == '__main__':
  main()
