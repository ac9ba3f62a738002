"""Result tables (Markdown, CSV, JSON) and the distance-against-score trade-off plot of a w sweep."""

import csv
import io
import json
import math

from cfg import files

# Each Fréchet distance d comes with d_lo, d_hi (its 95% bootstrap interval) and d_inf (FD∞).
DISTANCES = ('fid', 'fd_fmnist', 'fd_dinov2')
_WITH_INTERVALS = tuple(f'{d}{suffix}' for d in DISTANCES for suffix in ('', '_lo', '_hi', '_inf'))
METRIC_ORDER = _WITH_INTERVALS[:8] + ('sfid',) + _WITH_INTERVALS[8:] + (
    'is', 'is_fmnist', 'precision', 'recall', 'precision_k5', 'recall_k5', 'density', 'coverage',
    'class_accuracy')


def main_distance(rows):
  """The main Fréchet distance of the rows: FID where present, else fd_fmnist, else fd_dinov2."""
  present = {k for row in rows for k in row}
  return next(d for d in DISTANCES if d in present)


def best_row(rows, distance):
  """The row of the lowest finite distance (ties: the smaller w)."""
  finite = [row for row in rows if math.isfinite(row[distance])]
  return min(finite, key=lambda row: (row[distance], row['w']))


def metric_names(rows):
  present = {k for row in rows for k in row}
  return [m for m in METRIC_ORDER if m in present]


def _markdown_columns(rows):
  """Metric columns with each distance's interval folded into one 'd [95% CI]' column beside it."""
  names = metric_names(rows)
  return [m for m in names if not (m.endswith(('_lo', '_hi')) and m[:-3] in DISTANCES)]


def _cell(row, column):
  if column in DISTANCES and f'{column}_lo' in row:
    return f'{format_value(row.get(column))} [{format_value(row[f"{column}_lo"])}, {format_value(row[f"{column}_hi"])}]'
  return format_value(row.get(column))


def markdown_table(rows, *, columns=None):
  """| w | s = 1+w | metric … | with one line per row; a distance's cell is 'd [lo, hi]' (95% interval)."""
  columns = columns or ['w', 's'] + _markdown_columns(rows)
  names = {'s': 's = 1+w', **{d: f'{d} [95% CI]' for d in DISTANCES if any(f'{d}_lo' in r for r in rows)}}
  header = '| ' + ' | '.join(names.get(c, c) for c in columns) + ' |'
  lines = [header, '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row, c) for c in columns) + ' |')
  return '\n'.join(lines)


def format_value(value):
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) < 1e4 else f'{value:.0f}'
  return str(value)


def write_tables(directory, rows, info, *, provenance=None):
  """results.json ({info, rows[, provenance]}), table.md and table.csv in `directory`, each atomic."""
  record = {'info': info, 'rows': rows, **({'provenance': provenance} if provenance is not None else {})}
  files.write_text(files.join(directory, 'results.json'), json.dumps(record, indent=1, default=str))
  files.write_text(files.join(directory, 'table.md'), markdown_table(rows) + '\n')
  write_csv(files.join(directory, 'table.csv'), rows, ['w', 's'] + metric_names(rows))


def write_csv(path, rows, columns):
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, fieldnames=columns, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(path, text.getvalue())


def tradeoff_plot(path, series, *, title):
  """Distance (y) against score (x), one line per series, each point labelled by its w (paper Fig. 4)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  first = next(iter(series.values()))
  distance = 'fid' if 'fid' in first[0] else 'fd_fmnist'
  score = 'is' if 'is' in first[0] else 'is_fmnist'
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for label, rows in series.items():
    xs, ys = [r[score] for r in rows], [r[distance] for r in rows]
    ax.plot(xs, ys, marker='o', label=label)
    for r, x, y in zip(rows, xs, ys):
      ax.annotate(f'{r["w"]:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7)
  ax.set_xlabel(score)
  ax.set_ylabel(distance)
  ax.set_title(title, fontsize=9)
  if len(series) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  files.write_bytes(path, buffer.getvalue())
