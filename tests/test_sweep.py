"""Tests of cfg/sweep.py's cost estimate: the exact NFE per image of each job's sampler, method and grid."""

import json
import os
import re
import signal
import subprocess
import sys

from cfg import sweep
from configs import smoke

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# smoke: 20 samples at each of the weights (0, 1), so 40 images per evaluation.
IMAGES = 40


def _costs(tmp_path, field, values, base_overrides=()):
  planned = sweep.plan(smoke.get_config(), sweep.Sweep(field, values, train=False,
                                                       base_overrides=base_overrides), str(tmp_path))
  return {dict(job.overrides)[field]: cost for job, _, cost in planned}


def test_cost_counts_each_solver_s_evaluations(tmp_path):
  # T = 4 levels, every level guided (a 2B call counts 2): ancestral evaluates all 4 levels, DDIM and
  # DPM-Solver++ the 3 before λ_max, Heun twice on each of its 3 steps but the last (Euler's, once).
  costs = _costs(tmp_path, 'sampling.sampler', ('ancestral', 'ddim', 'dpmpp_2m', 'heun'))
  expected = {'ancestral': 2 * 4, 'ddim': 2 * 3, 'dpmpp_2m': 2 * 3, 'heun': 2 * (2 * 3 - 1)}
  for sampler, nfe in expected.items():
    assert costs[sampler]['num_steps'] == 4
    assert costs[sampler]['nfe_per_image'] == nfe, sampler
    assert costs[sampler]['image_nfe'] == nfe * IMAGES, sampler
    assert costs[sampler]['samples'] == IMAGES
  # The old estimate, 2 · samples · T for every sampler, was wrong for all but ancestral.
  assert costs['heun']['image_nfe'] != 2 * IMAGES * 4


def test_cost_counts_the_interval_s_skipped_calls_and_an_nfe_budget(tmp_path):
  # DDIM on the uniform-λ grid of 5 levels −20, −10, 0, 10, 20 evaluates the first 4; the interval
  # [−10, λ_hi] guides −10 and 0 (λ_hi = 0) or −10, 0 and 10 (λ_hi = 20): 4 + 2 and 4 + 3 per image.
  interval = (('guidance.method', 'interval'), ('sampling.grid', 'uniform_logsnr'),
              ('sampling.num_steps', 5), ('guidance.logsnr_lo', -10.0))
  costs = _costs(tmp_path, 'guidance.logsnr_hi', (0.0, 20.0), interval)
  assert [costs[hi]['nfe_per_image'] for hi in (0.0, 20.0)] == [6, 7]
  assert [costs[hi]['image_nfe'] for hi in (0.0, 20.0)] == [6 * IMAGES, 7 * IMAGES]
  # sampling.nfe = 16 unguided evaluations: Heun takes 8 steps (T = 9), 2 · 8 − 1 = 15 evaluations
  # (the last step is Euler's), 30 with the guiding branch.
  costs = _costs(tmp_path, 'sampling.nfe', (16,), (('sampling.sampler', 'heun'),))
  assert (costs[16]['num_steps'], costs[16]['nfe_per_image']) == (9, 30)
  assert costs[16]['image_nfe'] == 30 * IMAGES


def test_dry_run_prints_the_image_nfe_and_the_commands(tmp_path):
  config = smoke.get_config()
  planned = sweep.plan(config, sweep.Sweep('diffusion.p_uncond', (0.1,)), str(tmp_path))
  text = sweep.format_plan(planned, 'configs/smoke.py')
  # ddim T = 4: 3 guided levels, 6 evaluations per image, 240 for the 40 images.
  assert f'train_steps={config.train.num_steps}' in text
  assert 'nfe_per_image=6, image_nfe=240' in text
  workdir = os.path.join(str(tmp_path), 'diffusion.p_uncond=0.1')
  assert f'--workdir={workdir} --config.mode=eval' in text


def test_the_frontier_grids_cover_the_solvers_methods_and_checkpoints(capsys):
  from cfg import build
  from cfg.config_checks import check_config
  from configs import fashion_mnist, imagenet64
  for module in (fashion_mnist, imagenet64):
    grid = module.sweeps()['frontier']
    planned = sweep.plan(module.get_config(), grid, '/runs')
    # First the guide run (trained only), then the evaluated run (trained by its first cell).
    (guide, guide_config, guide_cost), *planned = planned
    assert (guide.workdir, guide.train, guide.evaluate) == (os.path.join('/runs', 'guide'), True, False)
    assert guide_cost['image_nfe'] == 0 and guide_cost['train_steps'] == guide_config.train.num_steps
    main_config = planned[0][1]
    assert guide_config.train.num_steps * 4 == main_config.train.num_steps  # shorter-trained and smaller
    assert guide_config.model.base_channels < main_config.model.base_channels
    build.model_from_config(guide_config)  # the smaller width is a valid model (heads, groups)
    guide_config.mode = 'train'
    check_config(guide_config)
    assert {job.workdir for job, _, _ in planned} == {os.path.join('/runs', 'frontier')}  # one trained run
    assert [cost['train_steps'] > 0 for _, _, cost in planned] == [True] + [False] * (len(planned) - 1)
    cells = [dict(job.overrides) for job, _, _ in planned]
    for job, config, _ in planned:
      config.mode = 'eval'
      check_config(config)  # every cell is a valid evaluation (CFG++ only with DDIM, …)
      # Each field once on the command line, with the value the cell's config has: CFG++'s own w grid
      # replaces the base grid (repeated, the flag parser kept the first and the cell failed).
      flags = [flag.split('=', 1) for flag in job.command('c.py', 'eval')[6:]]
      assert len({field for field, _ in flags}) == len(flags), flags
      assert dict(flags).get('--config.guidance.weights', str(config.guidance.weights)) == str(config.guidance.weights)
    guided_by = {c['guidance.guide_workdir'] for c in cells if c.get('guidance.method') == 'autoguidance'}
    assert guided_by == {guide.workdir}
    assert {(c['sampling.sampler'], c['sampling.nfe']) for c in cells if 'guidance.method' not in c
            and 'sampling.nfe' in c and 'eval.checkpoint_step' not in c} == {
                (s, n) for s in ('ancestral', 'ddim', 'dpmpp_2m', 'heun') for n in (8, 16, 32, 64)}
    assert {c.get('sampling.num_steps') for c in cells} >= {128, 256}
    methods = {(c['guidance.method'], c['sampling.sampler']) for c in cells if 'guidance.method' in c}
    assert methods == {(m, s) for m in ('interval', 'schedule', 'apg', 'rescale', 'autoguidance')
                       for s in ('ddim', 'heun')} | {('cfgpp', 'ddim')}
  capsys.readouterr()
  fashion = sweep.plan(fashion_mnist.get_config(), fashion_mnist.sweeps()['frontier'], '/runs')
  assert {c['eval.checkpoint_step'] for c in (dict(j.overrides) for j, _, _ in fashion) if 'eval.checkpoint_step' in c} == {
      2_500, 5_000, 10_000}
  # The dry run's total: image-NFE summed over cells, and the time from the measured constants.
  image_nfe = sum(cost['image_nfe'] for _, _, cost in fashion)
  seconds = sum(cost['image_nfe'] * fashion_mnist.SECONDS_PER_IMAGE_NFE
                + cost['train_steps'] * fashion_mnist.SECONDS_PER_TRAIN_STEP for _, _, cost in fashion)
  text = sweep.format_plan(fashion, 'configs/fashion_mnist.py')
  last = text.splitlines()[-1]
  assert last.startswith(f'# total: {len(fashion)} jobs, train_steps=12,500, image_nfe={image_nfe:,}')
  guide_lines = text.split('\n# ')[0].splitlines()  # the guide run: its train command, no evaluation
  assert len(guide_lines) == 2 and '--config.mode=train' in guide_lines[1]
  # What sweep.py runs: the guide trained, the run trained by its first cell, then every cell evaluated.
  ran = [(job.workdir, mode) for job, mode, _ in sweep.commands(fashion, 'configs/fashion_mnist.py')]
  assert ran == [('/runs/guide', 'train'), ('/runs/frontier', 'train')] + [('/runs/frontier', 'eval')] * (
      len(fashion) - 1)
  assert abs(int(last.split('est_seconds=')[1].split(' ')[0].replace(',', '')) - seconds) <= len(fashion)
  pod = sweep.plan(imagenet64.get_config(), imagenet64.sweeps()['frontier'], '/runs')
  assert 'est_seconds' not in sweep.format_plan(pod, 'configs/imagenet64.py')  # no measured cost there


def test_table1_sweep_trains_each_p_uncond_with_two_seeds_and_evaluates_with_the_paper_sampler():
  from configs import fashion_mnist
  planned = sweep.plan(fashion_mnist.get_config(), fashion_mnist.sweeps()['table1'], '/runs')
  assert [job.workdir for job, _, _ in planned] == [
      f'/runs/table1/diffusion.p_uncond={p},seed={seed}' for p in (0.1, 0.2, 0.5) for seed in (0, 1)]
  assert [(c.diffusion.p_uncond, c.seed) for _, c, _ in planned] == [(p, s) for p in (0.1, 0.2, 0.5) for s in (0, 1)]
  for job, config, cost in planned:
    assert job.train and (config.sampling.sampler, config.sampling.num_steps) == ('ancestral', 64)
    assert cost['samples'] == 512 * (6 + 2) and cost['train_steps'] == config.train.num_steps  # refined once
  assert 'est_seconds=' in sweep.format_plan(planned, 'configs/fashion_mnist.py').splitlines()[-1]


def test_a_grid_runs_and_collects_one_row_per_cell_and_weight(tmp_path):
  from cfg import evaluate, train
  from tests.test_evaluate import _eval_config
  config = _eval_config()
  config.sampling.update(dict(num_samples=20, batch_size=10))
  from configs.default import INTERVAL
  ddim = (('sampling.sampler', 'ddim'), ('sampling.nfe', 3))
  grid = sweep.Grid(cells=(ddim, (('sampling.sampler', 'heun'), ('sampling.grid', 'edm'), ('sampling.nfe', 4)),
                           ddim + (('guidance.method', 'interval'), *INTERVAL),
                           *((('sampling.sampler', 'ancestral'), ('sampling.num_steps', t)) for t in (2, 3))),
                    run='grid')
  planned = sweep.plan(config, grid, str(tmp_path))
  train.train_and_evaluate(planned[0][1], planned[0][0].workdir)
  results = [evaluate.run(job_config, job.workdir) for job, job_config, _ in planned]
  rows = sweep.collect(config, grid, str(tmp_path), str(tmp_path / 'table'))
  assert [(row['cell'], row['w']) for row in rows] == [
      (job.name.split('/', 1)[1], w) for job, _, _ in planned for w in config.guidance.weights]
  assert [{k: v for k, v in row.items() if k != 'cell'} for row in rows] == [r for cell in results for r in cell]
  assert (tmp_path / 'table' / 'table.md').read_text().count('\n') == 2 + len(rows)

  # The report from the collection: each cell's best fd_fmnist with its w, interval and FD∞, and the
  # cell's sampler, grid, T and NFE, as each evaluation's own results.json has them.
  from cfg import report
  from cfg.evaluation.tables import format_value
  collected = tmp_path / 'table' / 'results.json'
  page = report.write_report(collected, tmp_path / 'report')
  for job, job_config, _ in planned[:2]:  # the cfg cells; the interval is in the methods' table
    evaluation = sweep.find_results(job.workdir, job_config)
    info, best = evaluation['info'], min(evaluation['rows'], key=lambda row: (row['fd_fmnist'], row['w']))
    line = (f"| {info['sampler']} | {info['grid']} | {info['num_steps']} | {info['nfe_per_image']} | "
            f"{format_value(best['w'])} | {format_value(best['fd_fmnist'])} | "
            f"[{format_value(best['fd_fmnist_lo'])}, {format_value(best['fd_fmnist_hi'])}] | "
            f"{format_value(best['fd_fmnist_inf'])} |")
    assert line in page, (line, page)
  assert (tmp_path / 'report' / 'distance_vs_nfe.png').stat().st_size > 0
  assert (tmp_path / 'report' / 'tradeoff_methods.png').stat().st_size > 0
  # Each cell's sample grid at its best w, the evaluation's own PNG, copied beside the page and shown on it.
  collection = json.loads(collected.read_text())
  for job, job_config, _ in planned:
    folder, evaluation = sweep.find_evaluation(job.workdir, job_config)
    best = min(evaluation['rows'], key=lambda row: (row['fd_fmnist'], row['w']))
    cell = collection['cells'][job.name.split('/', 1)[1]]
    assert cell['samples'].endswith(f"_w{best['w']:g}.png")
    assert (tmp_path / 'report' / cell['samples']).read_bytes() == (folder / f"samples_w{best['w']:g}.png").read_bytes()
    assert f"]({cell['samples']}) |" in page
  # Finding (b): the interval against cfg at the same sampler and T, with the NFE it saves.
  summaries = {s['cell']: s for s in report.cell_summaries(collection)}
  interval, cfg = summaries[planned[2][0].name.split('/', 1)[1]], summaries[planned[0][0].name.split('/', 1)[1]]
  assert interval['nfe'] < cfg['nfe']
  assert (f"- (b) interval with ddim (T = {cfg['T']}): {report._fmt(interval)} against cfg {report._fmt(cfg)}: "
          f"{report._compare(interval, cfg)}; it saves {cfg['nfe'] - interval['nfe']} of cfg's {cfg['nfe']} NFE") in page
  # Table 2's analogue: the ancestral cells' distance [interval] at T = 2 and 3, then their score, per w.
  ancestral = [sweep.find_results(job.workdir, job_config)['rows'] for job, job_config, _ in planned[3:]]
  for w, *at_t in zip(config.guidance.weights, *ancestral):
    distances = [f"{format_value(r['fd_fmnist'])} [{format_value(r['fd_fmnist_lo'])}, "
                 f"{format_value(r['fd_fmnist_hi'])}]" for r in at_t]
    scores = [format_value(r['is_fmnist']) for r in at_t]
    assert f"| {format_value(w)} | {' | '.join(distances)} | {' | '.join(scores)} |" in page
  assert '| w | fd_fmnist T=2 | fd_fmnist T=3 | is_fmnist T=2 | is_fmnist T=3 |' in page
  first = (tmp_path / 'report' / 'report.md').read_bytes()
  report.write_report(collected, tmp_path / 'report')
  assert (tmp_path / 'report' / 'report.md').read_bytes() == first  # the same collection, the same page
  # With a p_uncond sweep's collection (one seed each): Table 1's analogue and finding (f) join the page.
  from tests.test_evaluate import _rows, _write_results
  for p in (0.1, 0.5):
    _write_results(str(tmp_path / 'p' / f'diffusion.p_uncond={p}'), config, 6, _rows(5 + 10 * p),
                   provenance={'commit': f'commit{p}', 'machine': {'host': 'vm'}})
  sweep.collect(config, sweep.Sweep('diffusion.p_uncond', (0.1, 0.5)), str(tmp_path / 'p'), str(tmp_path / 'p1'))
  table1 = json.loads((tmp_path / 'p1' / 'results.json').read_text())
  page = report.write_report(collected, tmp_path / 'report1', table1=tmp_path / 'p1' / 'results.json')
  assert report.table1_analogue(table1) in page and '| 0 | 6 | 10 | 2 | 2 |' in page
  assert ('- (f) p_uncond = 0.1: best fd_fmnist 6 (seed 0: 6 at w = 0); p_uncond = 0.5: 10 (seed 0: 10 at w = 0); '
          'difference 4: one seed per value, no seed spread to set it against.') in page
  assert ('Table 1\'s analogue: evaluations made at commit(s) commit0.1, commit0.5 on 1 machine description(s): '
          '{"host": "vm"}.') in page


def test_sigterm_to_the_sweep_reaches_its_job_which_saves_and_the_sweep_stops(tmp_path):
  """Neither left running alone nor killed: the training job saves its checkpoint, exits, and no later job
  starts; the same command continues from that checkpoint."""
  root = ROOT_DIR
  command = [sys.executable, 'sweep.py', '--config=configs/fashion_mnist.py:smoke', '--sweep=p_uncond',
             f'--root={tmp_path}', '--config.train.num_steps=1000', '--config.train.checkpoint_every=1000',
             '--config.train.log_every=1']
  process = subprocess.Popen(command, cwd=root, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines = []
  while not any(re.match(r'step [2-9]\d*/', line) for line in lines[-1:]):
    lines.append(process.stdout.readline())
    assert lines[-1], ''.join(lines)
  process.send_signal(signal.SIGTERM)  # to the sweep alone, not to its job
  out, _ = process.communicate(timeout=300)
  out = ''.join(lines) + out
  assert process.returncode == 0, out
  saved = int(re.search(r'SIGTERM: saved the checkpoint at step (\d+)', out).group(1))
  assert 2 <= saved < 1000
  assert 'stopped by a signal during diffusion.p_uncond=0.1: train' in out
  assert os.listdir(tmp_path) == ['diffusion.p_uncond=0.1']  # no later job began
  assert os.listdir(tmp_path / 'diffusion.p_uncond=0.1' / 'checkpoints') == [str(saved)]
  running = subprocess.run(['pgrep', '-f', '--', f'--workdir={tmp_path}'], capture_output=True, text=True)
  assert running.returncode == 1, running.stdout  # the job ended with the sweep


def test_the_report_names_heun_s_per_step_guidance_state_and_reads_it_into_finding_e():
  from cfg import report
  info = lambda **kw: {'step': 10, 'sampler': 'heun', 'grid': 'edm', 'num_steps': 9, 'nfe_per_image': 30, **kw}
  rows = lambda fd: [{'w': w, 'fd_fmnist': fd + w} for w in (0.0, 1.0)]
  collection = {'cells': {'cfg': {'info': info(method='cfg'), 'rows': rows(5.0)},
                          'apg': {'info': info(method='apg'), 'rows': rows(6.0)},
                          'apg/step': {'info': info(method='apg', guide_state='step'), 'rows': rows(7.0)}}}
  summaries = {s['cell']: s for s in report.cell_summaries(collection)}
  assert [summaries[c]['method'] for c in ('cfg', 'apg', 'apg/step')] == ['cfg', 'apg', 'apg (state per step)']
  lines = report.findings(list(summaries.values()))
  assert any(line.startswith('(e) apg with heun (T = 9): 6') for line in lines), lines
  assert any(line.startswith('(e) apg (state per step) with heun (T = 9): 7') for line in lines), lines
