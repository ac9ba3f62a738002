"""Result tables (Markdown, CSV, JSON) and the distance-against-score trade-off plot of a w sweep."""

import csv
import io
import json

from cfg import files

METRIC_ORDER = ('fid', 'fd_fmnist', 'is', 'is_fmnist', 'precision', 'recall', 'class_accuracy')


def metric_names(rows):
  present = {k for row in rows for k in row}
  return [m for m in METRIC_ORDER if m in present]


def markdown_table(rows, *, columns=None):
  """| w | s = 1+w | metric … | with one line per row."""
  columns = columns or ['w', 's'] + metric_names(rows)
  header = '| ' + ' | '.join('s = 1+w' if c == 's' else c for c in columns) + ' |'
  lines = [header, '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_format(row.get(c)) for c in columns) + ' |')
  return '\n'.join(lines)


def _format(value):
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}' if abs(value) < 1e4 else f'{value:.0f}'
  return str(value)


def write_tables(directory, rows, info):
  """results.json ({info, rows}), table.md and table.csv in `directory`, each written atomically."""
  files.write_text(files.join(directory, 'results.json'), json.dumps({'info': info, 'rows': rows}, indent=1))
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
