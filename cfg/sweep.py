"""Training and sampling sweeps (paper Tables 1 and 2): jobs, their cost, and the combined tables.

A config file may define `sweeps()` → {name: Sweep | Grid}. A Sweep varies one config field over values:
  train=True   each value is its own training run + evaluation (p_uncond, Table 1's columns);
  train=False  the values are sampling settings evaluated on one trained run (T, Table 2's columns).
A Grid evaluates one trained run at many cells, each a set of sampling settings (sampler × NFE, guidance
methods, checkpoints: the guided-sampling frontier); its collected table has one row per cell and w.
A Grid may also train guide runs (autoguidance's smaller, shorter-trained network), each in its own
workdir under the root, which its cells name with `RunDir(name)`.
Every job is a `launch.py` command with overrides and a workdir named by them, so locally they run
one after another (`sweep.py`), and on a cluster each command is its own job. Reruns continue:
training resumes from checkpoints, evaluations from their finished rounds.
"""

import dataclasses
import glob
import json
import os
import shlex
import time
from typing import Any, Optional, Sequence

from cfg import files
from cfg.errors import MissingInputError
from cfg.evaluation import provenance, tables


@dataclasses.dataclass(frozen=True)
class Sweep:
  field: str  # a dotted config field, e.g. 'diffusion.p_uncond'
  values: Sequence[Any]
  train: bool = True  # False: evaluate one trained run at each value
  base_overrides: tuple = ()  # (field, value) pairs every job of the sweep uses
  seeds: tuple = ()  # training seeds (config.seed): each value trained once per seed, for the seed spread
  # The runs' folder under the root (train=True: <run>/<field>=<value>[,seed=<seed>]; train=False: the
  # one trained run); default: named by base_overrides.
  run: str = ''
  seconds_per_image_nfe: Optional[float] = None  # measured costs for the dry run's estimate, as Grid's
  seconds_per_train_step: Optional[float] = None
  cost_source: str = ''

  def __post_init__(self):
    if self.seeds and not self.train:
      raise ValueError('Sweep.seeds are training seeds: they need train=True (one run per value and seed).')

  def runs(self):
    """[(value, seed overrides)] in job order: each value once, or once per seed."""
    return [(value, (('seed', seed),) if seed is not None else ())
            for value in self.values for seed in (self.seeds or (None,))]

  def label(self, value, seeded=()):
    """'diffusion.p_uncond=0.1' (with seeds: 'diffusion.p_uncond=0.1,seed=2')."""
    return ','.join(_label(f, v) for f, v in ((self.field, value),) + tuple(seeded))


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A cell's value that stands for the workdir of the Grid's guide run `name` under the sweep root
  (e.g. `('guidance.guide_workdir', RunDir('guide'))`); job names show it as the name alone."""
  name: str

  def __str__(self):
    return self.name


@dataclasses.dataclass(frozen=True)
class Grid:
  """Evaluations of one trained run (trained by the first job) at every cell of `cells`, each a tuple of
  (field, value) pairs: the settings that cell's evaluation changes.

  run: the trained run's folder under the sweep root (default: named by `base_overrides`).
  guides: ((name, overrides), …): runs trained (never evaluated) before the cells, in `<root>/<name>`,
    with `base_overrides` and then their own overrides, e.g. autoguidance's guide network.
  seconds_per_image_nfe, seconds_per_train_step: measured costs of this config's model on the machine
  `cost_source` names, for the dry run's time estimate (None: it prints counts only).
  """
  cells: tuple = ()
  run: str = ''
  guides: tuple = ()
  base_overrides: tuple = ()
  seconds_per_image_nfe: Optional[float] = None
  seconds_per_train_step: Optional[float] = None
  cost_source: str = ''
  train = False  # not a field: a grid never trains a run per cell


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  workdir: str
  overrides: tuple  # (field, value) pairs
  train: bool
  evaluate: bool = True  # False: a guide run, trained only

  def command(self, config_path, mode, python='python'):
    flags = [f'--config={config_path}', f'--workdir={self.workdir}', f'--config.mode={mode}']
    flags += [f'--config.{field}={value}' for field, value in self.overrides]
    return [python, '-m', 'cfg.cli.launch', *flags]


def _label(field, value):
  return f'{field}={value}'


def _merged(*groups):
  """One (field, value) per field, the last group's value winning (as `job_config` applies them): a
  field given twice on a command line would be parsed once, by the flag parser's rule, not ours."""
  merged = {}
  for field, value in (pair for group in groups for pair in group):
    merged.pop(field, None)
    merged[field] = value
  return tuple(merged.items())


def expand(sweep, root, extra_overrides=()):
  """The jobs of a sweep; training jobs get a workdir each, sampling jobs share their trained run's.

  Workdirs are named by the sweep's own overrides; `extra_overrides` (e.g. from the command line)
  go to every job without changing the names.
  """
  base = tuple(sweep.base_overrides)
  base_name = getattr(sweep, 'run', '') or ','.join(_label(f, v) for f, v in base) or 'base'
  if isinstance(sweep, Grid):
    in_root = lambda cell: tuple((f, os.path.join(root, v.name) if isinstance(v, RunDir) else v) for f, v in cell)
    guides = [Job(name, os.path.join(root, name), _merged(extra_overrides, base, overrides),
                  train=True, evaluate=False) for name, overrides in sweep.guides]
    return guides + [Job(f'{base_name}/' + ','.join(_label(f, v) for f, v in cell), os.path.join(root, base_name),
                         _merged(extra_overrides, base, in_root(cell)), train=False) for cell in sweep.cells]
  jobs = []
  for value, seeded in sweep.runs():
    overrides = _merged(extra_overrides, base, ((sweep.field, value),), seeded)
    if sweep.train:
      name = (f'{sweep.run}/{sweep.label(value, seeded)}' if sweep.run
              else ','.join(_label(f, v) for f, v in base + ((sweep.field, value),) + seeded))
      jobs.append(Job(name, os.path.join(root, name), overrides, train=True))
    else:
      jobs.append(Job(f'{base_name}/{_label(sweep.field, value)}', os.path.join(root, base_name),
                      overrides, train=False))
  return jobs


def job_config(config, job):
  """`config` with the job's overrides applied."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for field, value in job.overrides:
      node = config
      *parents, leaf = field.split('.')
      for parent in parents:
        node = node[parent]
      node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value
  return config


def estimate_cost(config, *, trains, evaluates=True):
  """Training steps and images; the evaluation's samples (num_samples × weights, at most two more
  weights per pass of eval.refine), its grid levels T, its NFE per image and its image-NFE = NFE per
  image × samples.

  NFE per image is the sampler's exact count, the one `sample` and `eval` print
  (`generate.evaluations`: the solver, method, grid, T or `sampling.nfe`, the guidance interval's
  skipped calls; autoguidance counts both networks). No time is estimated: the seconds per image-NFE
  depend on the model and the machine, and the project has measured none that would hold for a config.
  """
  from cfg import generate  # pylint: disable=g-import-not-at-top
  from cfg.config_checks import guidance_weights  # pylint: disable=g-import-not-at-top
  num_weights = len(guidance_weights(config)) + 2 * config.eval.refine
  samples = config.sampling.num_samples * num_weights if evaluates else 0
  nfe = generate.evaluations(config)
  train_steps = config.train.num_steps if trains else 0
  return {
      'train_steps': train_steps,
      'train_images': train_steps * config.train.batch_size,
      'samples': samples,
      'num_steps': generate.num_steps(config),
      'nfe_per_image': nfe.total,
      'image_nfe': nfe.total * samples,
  }


def plan(config, sweep, root, extra_overrides=()):
  """[(job, config, cost)] in run order; the first sampling job also trains the shared run."""
  planned, trained = [], set()
  for job in expand(sweep, root, extra_overrides):
    job_cfg = job_config(config, job)
    cost = estimate_cost(job_cfg, trains=job.workdir not in trained, evaluates=job.evaluate)
    if getattr(sweep, 'seconds_per_image_nfe', None) is not None:
      cost['est_seconds'] = round(cost['image_nfe'] * sweep.seconds_per_image_nfe
                                  + cost['train_steps'] * (sweep.seconds_per_train_step or 0.0))
    trained.add(job.workdir)
    planned.append((job, job_cfg, cost))
  return planned


def find_results(workdir, config):
  """results.json of the evaluation `config` describes, or None if it has not finished (`find_evaluation`)."""
  return find_evaluation(workdir, config)[1]


def find_evaluation(workdir, config):
  """(folder, results.json) of the evaluation `config` describes, or (None, None) if it has not finished.

  That is the folder `evaluate.run` writes for this config: same sampler, T, sample count, seed and
  weights, at `eval.checkpoint_step`, or at the newest evaluated checkpoint when that is None. Other
  evaluations in the workdir (another seed, more samples) are never mixed in.
  """
  from cfg.config_checks import guidance_weights  # pylint: disable=g-import-not-at-top
  from cfg.evaluate import evaluation_tag  # pylint: disable=g-import-not-at-top
  rest = evaluation_tag(config, 0, guidance_weights(config)).split('_', 1)[1]  # the tag after its step
  step = '*' if config.eval.checkpoint_step is None else config.eval.checkpoint_step
  evaluations = files.join(workdir, 'eval')
  found = ([(path.parent, files.read_json(path))
            for path in evaluations.glob(f'step{step}_{glob.escape(rest)}/results.json')]
           if evaluations.is_dir() else [])
  return max(found, key=lambda found: found[1]['info']['step']) if found else (None, None)


def collect_grid(config, grid, root, out_dir, extra_overrides=()):
  """One table of the finished cells of a Grid: a row per cell and w (the cell's settings, w, metrics);
  results.json holds each cell's rows, info and provenance, and this collection's own; samples/ holds
  each cell's sample grid at its best w (lowest main distance), named in results.json."""
  started = time.time()
  out_dir = files.path(out_dir)
  rows, cells, series = [], {}, {}
  evaluated = [(job, job_cfg) for job, job_cfg, _ in plan(config, grid, root, extra_overrides) if job.evaluate]
  for index, (job, job_cfg) in enumerate(evaluated):
    label = job.name.split('/', 1)[1]
    folder, result = find_evaluation(job.workdir, job_cfg)
    if result is None:
      print(f'{job.name}: no results yet', flush=True)
      continue
    cells[label] = {'rows': result['rows'], 'info': result['info'], 'provenance': result.get('provenance')}
    w = tables.best_row(result['rows'], tables.main_distance(result['rows']))['w']
    grid_png = folder / f'samples_w{w:g}.png'
    if grid_png.exists():
      cells[label]['samples'] = f'samples/cell{index:02d}_w{w:g}.png'
      files.write_bytes(out_dir / cells[label]['samples'], grid_png.read_bytes())
    series[label] = result['rows']
    rows += [{'cell': label, **row} for row in result['rows']]
  if not rows:
    raise MissingInputError(f'no finished evaluations under {root}; run the sweep first.')
  columns = ['cell', 'w'] + tables.metric_names(rows)
  text = tables.markdown_table(rows, columns=columns)
  files.write_text(out_dir / 'table.md', text + '\n')
  tables.write_csv(out_dir / 'table.csv', rows, columns)
  files.write_text(out_dir / 'results.json', json.dumps(
      {'grid': dataclasses.asdict(grid), 'cells': cells,
       'provenance': provenance.provenance(wall_seconds=time.time() - started)}, indent=1, default=str))
  tables.tradeoff_plot(out_dir / 'tradeoff.png', series, title=f'{len(series)} cells')
  print(text, flush=True)
  return rows


def collect(config, sweep, root, out_dir, extra_overrides=()):
  """Combined table (w × sweep values) and trade-off plot of the finished jobs; returns the rows.

  results.json holds the series, each job's evaluation info and provenance (commit, machine, evaluator
  and checkpoint fingerprints, …) as its results.json recorded them, and this collection's own.
  """
  if isinstance(sweep, Grid):
    return collect_grid(config, sweep, root, out_dir, extra_overrides)
  started = time.time()
  series, combined, jobs = {}, {}, {}
  planned = plan(config, sweep, root, extra_overrides)
  columns_of = [sweep.label(value, seeded).split('=', 1)[1] for value, seeded in sweep.runs()]  # '0.1,seed=2'
  for (job, job_cfg, _), (value, seeded), column in zip(planned, sweep.runs(), columns_of):
    result = find_results(job.workdir, job_cfg)
    if result is None:
      print(f'{job.name}: no results yet', flush=True)
      continue
    series[sweep.label(value, seeded)] = result['rows']
    jobs[sweep.label(value, seeded)] = {'info': result['info'], 'provenance': result.get('provenance'),
                                        'value': value, 'seed': dict(seeded).get('seed', job_cfg.seed)}
    for row in result['rows']:
      combined.setdefault(row['w'], {'w': row['w']})
      for metric in tables.metric_names([row]):
        combined[row['w']][f'{metric} @ {column}'] = row[metric]
  if not series:
    raise MissingInputError(f'no finished evaluations under {root}; run the sweep first.')
  rows = [combined[w] for w in sorted(combined)]
  out_dir = files.path(out_dir)
  columns = ['w'] + sorted({k for r in rows for k in r if k != 'w'},
                           key=lambda k: (tables.METRIC_ORDER.index(k.split(' @ ')[0]),
                                          columns_of.index(k.split(' @ ')[1])))
  text = tables.markdown_table(rows, columns=columns)
  files.write_text(out_dir / 'table.md', text + '\n')
  tables.write_csv(out_dir / 'table.csv', rows, columns)
  files.write_text(out_dir / 'results.json', json.dumps(
      {'sweep': dataclasses.asdict(sweep), 'series': series, 'jobs': jobs,
       'provenance': provenance.provenance(wall_seconds=time.time() - started)}, indent=1, default=str))
  tables.tradeoff_plot(out_dir / 'tradeoff.png', series, title=f'sweep over {sweep.field}')
  print(text, flush=True)
  return rows


def commands(planned, config_path, python='python'):
  """[(job, mode, command)] in run order: each workdir is trained by its first job, then every job that
  evaluates is evaluated (a guide run is only trained)."""
  ordered, trained = [], set()
  for job, _, _ in planned:
    modes = (['train'] if job.workdir not in trained else []) + (['eval'] if job.evaluate else [])
    trained.add(job.workdir)
    ordered += [(job, mode, job.command(config_path, mode, python=python)) for mode in modes]
  return ordered


def format_plan(planned, config_path):
  """Each job's cost and commands, then the totals (and the estimated time where the sweep has costs)."""
  lines = []
  for job, _, cost in planned:
    lines.append(f'# {job.name}  ({", ".join(f"{k}={v:,}" for k, v in cost.items())})')
    if cost['train_steps']:
      lines.append(shlex.join(job.command(config_path, 'train')))
    if job.evaluate:
      lines.append(shlex.join(job.command(config_path, 'eval')))
  totals = {key: sum(cost.get(key, 0) for _, _, cost in planned)
            for key in ('train_steps', 'image_nfe', 'est_seconds') if any(key in c for _, _, c in planned)}
  total = ', '.join(f'{k}={v:,}' for k, v in totals.items())
  if 'est_seconds' in totals:
    total += f' (≈ {totals["est_seconds"] / 3600:.1f} h)'
  lines.append(f'# total: {len(planned)} jobs, {total}')
  return '\n'.join(lines)
