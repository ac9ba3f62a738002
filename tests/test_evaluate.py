"""Evaluation rounds and sweeps: a killed evaluation resumes to the same numbers; tables and plots."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cfg import data, evaluate, sweep, train
from cfg.errors import MissingInputError
from cfg.evaluation import adm_io, dinov2, feature_net, inception, metrics, rounds, synthetic_weights
from configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_FLAGS = ('--config.sampling.num_samples=40', '--config.sampling.batch_size=10')


def _eval_config():
  config = smoke.get_config()
  config.mode = 'eval'
  config.train.preview_every = 0
  config.sampling.update(dict(num_samples=40, batch_size=10))
  config.eval.feature_net_dir = os.path.join(ROOT, 'experiments/fashion_mnist/feature_net')
  return config


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(_eval_config(), workdir)
  return workdir


def test_killed_evaluation_resumes_to_the_same_numbers(trained_workdir, tmp_path):
  clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
  shutil.copytree(trained_workdir, clean)
  shutil.copytree(trained_workdir, killed)
  process = subprocess.Popen(
      [sys.executable, 'launch.py', '--config=configs/smoke.py', f'--workdir={killed}', '--config.mode=eval',
       f'--config.eval.feature_net_dir={_eval_config().eval.feature_net_dir}', *EVAL_FLAGS],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not glob.glob(os.path.join(killed, 'eval', '*', 'round_00000.npz')) and time.time() < deadline:
    assert process.poll() is None, 'the evaluation ended before it could be killed'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = glob.glob(os.path.join(killed, 'eval', '*', 'round_*.npz'))
  assert 1 <= len(finished) < 4, finished  # killed between rounds, not after the last

  resumed_rows = evaluate.run(_eval_config(), killed)
  clean_rows = evaluate.run(_eval_config(), clean)
  assert resumed_rows == clean_rows
  for name in ('fd_fmnist', 'fd_fmnist_lo', 'fd_fmnist_hi', 'fd_fmnist_inf', 'is_fmnist', 'precision',
               'recall', 'precision_k5', 'recall_k5', 'density', 'coverage', 'class_accuracy'):
    assert all(np.isfinite(row[name]) for row in clean_rows), name
  assert all(row['fd_fmnist_lo'] < row['fd_fmnist_hi'] for row in clean_rows)
  (folder,) = glob.glob(os.path.join(clean, 'eval', '*'))
  for name in ('results.json', 'table.md', 'table.csv', 'tradeoff.png', 'samples_w0.png', 'samples_w1.npz'):
    assert os.path.exists(os.path.join(folder, name)), name
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)
  assert results['rows'] == clean_rows
  record = results['provenance']
  assert record['commit'] and isinstance(record['tree_dirty'], bool) and record['wall_seconds'] > 0
  assert record['machine']['device_count'] >= 1 and record['machine']['process_count'] == 1
  assert record['labels'] == results['info']['labels'] == 'balanced'
  assert record['config']['sampling']['num_samples'] == results['info']['num_samples'] == 40
  assert record['reference'] == {'fmnist': 'fashion_mnist test split'}
  assert len(record['evaluators']['fmnist']) == 64 and record['checkpoint']['step'] == 6
  assert (results['info']['sampler'], results['info']['nfe_per_image']) == ('ddim', 6)
  with np.load(os.path.join(folder, 'samples_w0.npz')) as batch:  # balanced: 4 of each class
    assert np.bincount(batch['arr_1'], minlength=10).tolist() == [4] * 10
  table = open(os.path.join(folder, 'table.md')).read()
  assert f'| {clean_rows[0]["fd_fmnist"]:.4g} [{clean_rows[0]["fd_fmnist_lo"]:.4g}, ' in table


class _Killed(Exception):
  pass


def _kill_after_first_round(index):
  if index == 0:
    raise _Killed()


def test_resuming_rounds_with_another_feature_network_refuses_and_keeps_them(trained_workdir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, workdir)
  config = _eval_config()
  with pytest.raises(_Killed):
    evaluate.run(config, workdir, on_round=_kill_after_first_round)
  (folder,) = glob.glob(os.path.join(workdir, 'eval', '*'))
  before = {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)}
  assert sorted(before) == ['manifest.json', 'round_00000.json', 'round_00000.npz']
  net = feature_net.load_feature_net(config.eval.feature_net_dir)  # the same network, one weight moved
  variables = jax.tree.map(np.asarray, net.variables)
  variables['params']['Dense_0']['bias'] = variables['params']['Dense_0']['bias'] + 1e-3
  feature_net.save_feature_net(feature_net.TrainedFeatureNet(net.network, variables, net.info),
                               str(tmp_path / 'other_net'))
  config.eval.feature_net_dir = str(tmp_path / 'other_net')
  with pytest.raises(rounds.RoundsMismatchError, match=r'evaluators\.fmnist: .* there, .* now.*nothing was '
                     'overwritten'):
    evaluate.run(config, workdir)
  after = {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)}
  assert after == before


def test_how_network_calls_are_split_is_not_what_rounds_are_of():
  config = _eval_config()
  settings = evaluate.sampling_settings(config)
  config.sampling.max_network_batch = 2
  assert evaluate.sampling_settings(config) == settings and settings['batch_size'] == config.sampling.batch_size
  config.sampling.batch_size += 1
  assert evaluate.sampling_settings(config) != settings


def test_refined_weights_bisect_toward_the_best_weight():
  grid = [0.0, 0.3, 1.0, 2.0, 3.0, 4.0]
  assert evaluate.refined_weights(grid, [9, 8, 5, 3, 4, 6]) == [1.5, 2.5]
  assert evaluate.refined_weights(grid[::-1], [6, 4, 3, 5, 8, 9]) == [1.5, 2.5]  # any order
  assert evaluate.refined_weights(grid, [1, 8, 5, 3, 4, 6]) == [0.15]  # at an edge: one side
  assert evaluate.refined_weights(grid + [1.5, 2.5], [9, 8, 5, 3, 4, 6, 3.5, 2]) == [2.25, 2.75]
  assert evaluate.refined_weights([0.0, 0.5, 1.0], [2, 2, 1]) == [0.75]
  assert evaluate.refined_weights([0.0, 1e-10], [1, 2]) == []  # nothing new between them


def test_refinement_passes_add_midpoints_with_the_same_noise(trained_workdir, tmp_path):
  """eval.refine = 2: two passes bisecting toward the best w; the first pass's rows are those of an
  evaluation without refinement, to the bit (the same samples), and each pass's weights are the midpoints
  around the best distance of all weights before it."""
  config = _eval_config()
  config.guidance.weights = (0.0, 1.0, 3.0)
  plain, refined = str(tmp_path / 'plain'), str(tmp_path / 'refined')
  shutil.copytree(trained_workdir, plain)
  shutil.copytree(trained_workdir, refined)
  base = evaluate.run(config, plain)
  config.eval.refine = 2
  rows = evaluate.run(config, refined)
  by_w = {row['w']: row for row in rows}
  assert [row['w'] for row in rows] == sorted(by_w) and len(by_w) == len(rows)
  for row in base:
    assert by_w[row['w']] == row
  first = evaluate.refined_weights([r['w'] for r in base], [r['fd_fmnist'] for r in base])
  seen = [r['w'] for r in base] + first
  second = evaluate.refined_weights(seen, [by_w[w]['fd_fmnist'] for w in seen])
  assert first and sorted(by_w) == sorted(seen + second)
  (folder,) = glob.glob(os.path.join(refined, 'eval', '*'))
  with open(os.path.join(folder, 'results.json')) as f:
    stored = json.load(f)
  assert stored['provenance']['weight_passes'] == [[0.0, 1.0, 3.0], first, second]
  assert [row['w'] for row in stored['rows']] == sorted(by_w)
  assert sorted(os.listdir(os.path.join(folder, 'refine1'))) == ['manifest.json', *sorted(
      f'round_{i:05d}.{ext}' for i in range(4) for ext in ('json', 'npz'))]
  assert sorted(stored['provenance']['sampled_by']) == sorted(
      f'{prefix}round_{i:05d}' for prefix in ('', 'refine1/', 'refine2/') for i in range(4))


TINY_DINOV2 = dict(patch_size=14, embed_dim=64, depth=1, num_heads=1, mlp_ratio=4.0, pos_grid=16)


def _tiny_dinov2_state_dict(seed=0):
  """Generated weights for a one-block DINOv2 ViT of 64-d tokens (what `architecture_of` infers)."""
  rng = np.random.default_rng(seed)
  def tensor(name, shape):
    if name.endswith('gamma'):
      return np.full(shape, 0.5, np.float32)
    if 'norm' in name and name.endswith('weight'):
      return 1 + 0.1 * rng.standard_normal(shape).astype(np.float32)
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)
  return {name: tensor(name, shape) for name, shape in dinov2.expected_state_dict_shapes(TINY_DINOV2).items()}


def test_inception_and_dinov2_path_end_to_end_with_generated_weights(trained_workdir, tmp_path):
  """A tiny smoke run → rounds → metrics → tables through FID Inception (sFID too) and DINOv2."""
  config = _eval_config()
  config.sampling.update(dict(num_samples=10, batch_size=10))
  config.guidance.w = 1.0
  np.savez(tmp_path / 'inception.npz', **synthetic_weights.synthetic_state_dict(
      inception.expected_state_dict_shapes(), seed=0))
  np.savez(tmp_path / 'dinov2.npz', **_tiny_dinov2_state_dict())
  reference_images, _ = data.load_split(config.data, 'test', max_examples=12)
  adm_io.write_sample_batch(tmp_path / 'reference.npz', reference_images)  # images only: mu, sigma computed
  config.eval.update(dict(inception_weights=str(tmp_path / 'inception.npz'),
                          reference_batch=str(tmp_path / 'reference.npz'), fd_dinov2=True,
                          dinov2_weights=str(tmp_path / 'dinov2.npz'), bootstrap_resamples=20))
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, workdir)  # the fixture's workdir stays without evaluations
  (row,) = evaluate.run(config, workdir)
  for distance in ('fd_fmnist', 'fid', 'fd_dinov2'):
    for name in (distance, f'{distance}_lo', f'{distance}_hi', f'{distance}_inf'):
      assert np.isfinite(row[name]) and row[name] >= 0, name
    assert row[f'{distance}_lo'] < row[f'{distance}_hi'], distance
  assert np.isfinite(row['sfid']) and row['sfid'] > 0 and np.isfinite(row['is'])
  (folder,) = glob.glob(os.path.join(workdir, 'eval', '*'))
  # The distances are those of the written samples' features (the port, run here) to the reference's.
  samples, _ = adm_io.read_sample_batch(os.path.join(folder, 'samples_w1.npz'))
  dino_variables, architecture = dinov2.load_dinov2_weights(str(tmp_path / 'dinov2.npz'))
  assert architecture == TINY_DINOV2
  dino = lambda images: np.asarray(dinov2.dinov2_features(dino_variables, images, architecture=architecture))
  mu, sigma = metrics.feature_statistics(dino(reference_images))
  assert row['fd_dinov2'] == pytest.approx(
      metrics.frechet_distance_to_reference(features=dino(samples), mu_ref=mu, sigma_ref=sigma), rel=1e-5)
  variables = inception.load_inception_params(str(tmp_path / 'inception.npz'))
  pool3, _, spatial = inception.compute_features(variables, [samples], batch_size=10, spatial=True)
  ref_pool3, _, ref_spatial = inception.compute_features(
      variables, [reference_images[:10], reference_images[10:]], batch_size=10, spatial=True)
  for name, ours, theirs in (('fid', pool3, ref_pool3), ('sfid', spatial, ref_spatial)):
    mu, sigma = metrics.feature_statistics(theirs)
    assert row[name] == pytest.approx(
        metrics.frechet_distance_to_reference(features=ours, mu_ref=mu, sigma_ref=sigma), rel=1e-5), name
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)
  assert sorted(results['provenance']['evaluators']) == ['dinov2', 'fmnist', 'inception']
  assert results['provenance']['reference']['inception'] == f'reference batch {tmp_path / "reference.npz"}'
  table = open(os.path.join(folder, 'table.md')).read()
  for column in ('fd_fmnist [95% CI]', 'fid [95% CI]', 'fid_inf', 'sfid', 'fd_dinov2 [95% CI]'):
    assert f' {column} |' in table, column


def test_fd_dinov2_without_weights_says_how_to_get_them():
  config = _eval_config()
  config.eval.fd_dinov2 = True
  with pytest.raises(MissingInputError, match=re.escape(
      'config.eval.fd_dinov2=True needs config.eval.dinov2_weights, the converted DINOv2 ViT-L/14 .npz '
      '(download https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth, then '
      '`python -m cfg.evaluation.convert_dinov2 --torch_weights=dinov2_vitl14_pretrain.pth '
      '--out=dinov2_vitl14.npz`).')):
    evaluate.feature_spaces(config)


def test_sweep_plan_names_workdirs_and_counts_cost(tmp_path):
  config = smoke.get_config()
  planned = sweep.plan(config, sweep.Sweep('diffusion.p_uncond', (0.1, 0.5)), str(tmp_path))
  assert [os.path.basename(job.workdir) for job, _, _ in planned] == [
      'diffusion.p_uncond=0.1', 'diffusion.p_uncond=0.5']
  assert [c.diffusion.p_uncond for _, c, _ in planned] == [0.1, 0.5]
  _, _, cost = planned[0]
  weights = len(config.guidance.weights)
  # ddim T = 4: 3 guided levels of a 2B call, 6 evaluations per image (tests/test_sweep.py has the rest).
  assert cost['image_nfe'] == 6 * config.sampling.num_samples * weights
  assert cost['train_images'] == config.train.num_steps * config.train.batch_size

  steps = sweep.plan(config, sweep.Sweep('sampling.num_steps', (4, 8), train=False), str(tmp_path))
  assert len({job.workdir for job, _, _ in steps}) == 1  # one trained run, sampled at each T
  assert [cost['train_steps'] for _, _, cost in steps] == [config.train.num_steps, 0]


def _write_results(workdir, config, step, rows, provenance=None):
  """A finished evaluation of `config` at `step`, where evaluate.run would have written it."""
  folder = os.path.join(workdir, 'eval', evaluate.evaluation_tag(
      config, step, evaluate.guidance_weights(config)))
  os.makedirs(folder)
  results = {'info': {'step': step, 'seed': config.sampling.seed}, 'rows': rows}
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(results if provenance is None else {**results, 'provenance': provenance}, f)


def _rows(fd):
  return [{'w': w, 's': 1 + w, 'fd_fmnist': fd + w, 'is_fmnist': 2 + w} for w in (0.0, 1.0)]


def test_collect_builds_the_combined_table(tmp_path):
  for p, fd in ((0.1, 5.0), (0.5, 7.0)):
    _write_results(str(tmp_path / f'diffusion.p_uncond={p}'), smoke.get_config(), 6, _rows(fd))
  out = str(tmp_path / 'table')
  rows = sweep.collect(smoke.get_config(), sweep.Sweep('diffusion.p_uncond', (0.1, 0.5)), str(tmp_path), out)
  assert rows == [{'w': 0.0, 'fd_fmnist @ 0.1': 5.0, 'is_fmnist @ 0.1': 2.0, 'fd_fmnist @ 0.5': 7.0,
                   'is_fmnist @ 0.5': 2.0},
                  {'w': 1.0, 'fd_fmnist @ 0.1': 6.0, 'is_fmnist @ 0.1': 3.0, 'fd_fmnist @ 0.5': 8.0,
                   'is_fmnist @ 0.5': 3.0}]
  assert os.path.exists(os.path.join(out, 'tradeoff.png'))
  assert '| w |' in open(os.path.join(out, 'table.md')).read()
  with open(os.path.join(out, 'results.json')) as f:
    collected = json.load(f)
  assert collected['jobs']['diffusion.p_uncond=0.5'] == {'info': {'step': 6, 'seed': 1}, 'provenance': None,
                                                          'value': 0.5, 'seed': smoke.get_config().seed}
  record = collected['provenance']
  assert record['commit'] and record['machine']['device_count'] >= 1 and record['wall_seconds'] >= 0


def test_a_sweep_over_seeds_keeps_each_run_and_the_report_sets_p_uncond_against_the_seed_spread(tmp_path):
  from cfg import report
  config = smoke.get_config()
  for (p, seed), fd in {(0.1, 1): 5.0, (0.1, 2): 5.5, (0.5, 1): 7.0, (0.5, 2): 6.0}.items():
    _write_results(str(tmp_path / f'diffusion.p_uncond={p},seed={seed}'), config, 6, _rows(fd))
  seeded = sweep.Sweep('diffusion.p_uncond', (0.1, 0.5), seeds=(1, 2))
  assert [job.overrides[-2:] for job in sweep.expand(seeded, str(tmp_path))] == [
      (('diffusion.p_uncond', p), ('seed', seed)) for p in (0.1, 0.5) for seed in (1, 2)]
  out = str(tmp_path / 'table')
  rows = sweep.collect(config, seeded, str(tmp_path), out)
  header = '| ' + ' | '.join(['w'] + [f'{m} @ {p},seed={seed}' for m in ('fd_fmnist', 'is_fmnist')
                                      for p in (0.1, 0.5) for seed in (1, 2)]) + ' |'
  assert open(os.path.join(out, 'table.md')).read().startswith(header + '\n')
  assert [rows[0][f'fd_fmnist @ {c}'] for c in ('0.1,seed=1', '0.1,seed=2', '0.5,seed=1', '0.5,seed=2')] == [
      5.0, 5.5, 7.0, 6.0]
  with open(os.path.join(out, 'results.json')) as f:
    collected = json.load(f)
  assert {k: (v['value'], v['seed']) for k, v in collected['jobs'].items()} == {
      f'diffusion.p_uncond={p},seed={seed}': (p, seed) for p in (0.1, 0.5) for seed in (1, 2)}
  # Table 1's analogue: each value's mean over seeds, then each seed's; the score's mean.
  table = report.table1_analogue(collected)
  assert '| w | fd_fmnist p_uncond=0.1 | fd_fmnist p_uncond=0.5 | is_fmnist p_uncond=0.1 | is_fmnist p_uncond=0.5 |' in table
  assert '| 0 | 5.25 (5 / 5.5) | 6.5 (7 / 6) | 2 | 2 |' in table and '| 1 | 6.25 (6 / 6.5) | 7.5 (8 / 7) | 3 | 3 |' in table
  # (f): means 5.25 and 6.5 at the best w; difference 1.25 against the widest seed range, 1 (p_uncond 0.5).
  assert report.finding_f(collected) == (
      '(f) p_uncond = 0.1: best fd_fmnist 5.25 (seed 1: 5 at w = 0, seed 2: 5.5 at w = 0); p_uncond = 0.5: 6.5 '
      '(seed 1: 7 at w = 0, seed 2: 6 at w = 0); difference 1.25, larger than the seed spread (1, the widest '
      "range of one value's seeds).")
  with pytest.raises(ValueError, match='training seeds'):
    sweep.Sweep('sampling.num_steps', (4, 8), train=False, seeds=(1, 2))


def test_collect_takes_the_evaluation_the_config_describes(tmp_path):
  """Other seeds, sample counts or steps in the same workdir are never mixed into the table."""
  workdir = str(tmp_path / 'diffusion.p_uncond=0.1')
  config = smoke.get_config()
  other_seed, more_samples = smoke.get_config(), smoke.get_config()
  other_seed.sampling.seed += 1
  more_samples.sampling.num_samples *= 4
  _write_results(workdir, config, 4, _rows(10.0))
  _write_results(workdir, config, 8, _rows(20.0))
  _write_results(workdir, other_seed, 8, _rows(30.0))
  _write_results(workdir, more_samples, 8, _rows(40.0))
  _write_results(workdir, more_samples, 12, _rows(50.0))
  assert sweep.find_results(workdir, config)['rows'] == _rows(20.0)  # newest step of this config
  assert sweep.find_results(workdir, other_seed)['rows'] == _rows(30.0)
  assert sweep.find_results(workdir, more_samples)['rows'] == _rows(50.0)
  config.eval.checkpoint_step = 4
  assert sweep.find_results(workdir, config)['rows'] == _rows(10.0)
  config.eval.checkpoint_step = 12
  assert sweep.find_results(workdir, config) is None
  with pytest.raises(FileNotFoundError, match='no finished evaluations'):
    sweep.collect(config, sweep.Sweep('diffusion.p_uncond', (0.1,)), str(tmp_path),
                  str(tmp_path / 'table'))


def test_provenance_records_the_commit_of_the_code_the_process_imported(monkeypatch):
  """A commit landing while a long evaluation runs must not relabel the code that ran it."""
  from cfg.evaluation import provenance
  before = provenance.provenance(wall_seconds=0.0)
  monkeypatch.setattr(provenance, 'git', lambda *args: 'f' * 40 if args[0] == 'rev-parse' else ' M cfg/x.py')
  after = provenance.provenance(wall_seconds=0.0)
  assert (after['commit'], after['tree_dirty']) == (before['commit'], before['tree_dirty'])
  assert after['commit'] != 'f' * 40


def test_a_rescore_names_the_code_that_sampled_the_rounds(trained_workdir, tmp_path, monkeypatch):
  """Rerunning a finished evaluation only rescores its rounds; results.json's `sampled_by` still names the
  commit that sampled each round, its own commit the one that scored them."""
  from cfg import report
  from cfg.evaluation import provenance
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, workdir)
  rows = evaluate.run(_eval_config(), workdir)
  (folder,) = glob.glob(os.path.join(workdir, 'eval', '*'))
  read = lambda: json.load(open(os.path.join(folder, 'results.json')))['provenance']
  sampler = provenance.code_version()[0]
  first = read()
  assert sorted(first['sampled_by']) == [f'round_{i:05d}' for i in range(4)]
  assert all(r['commit'] == sampler and r['seconds'] > 0 and r['machine'] == first['machine']
             for r in first['sampled_by'].values())

  monkeypatch.setattr(provenance, 'code_version', lambda: ('f' * 40, False))
  assert evaluate.run(_eval_config(), workdir) == rows
  rescored = read()
  assert rescored['rounds_resumed'] == 4 and rescored['commit'] == 'f' * 40
  assert rescored['sampled_by'] == first['sampled_by']
  line = report._commits_and_machines([{'provenance': rescored}])
  assert sampler in line and 'f' * 40 in line and '1 machine description(s)' in line

  # Rounds from before rounds had records: what the previous results.json says of them.
  for path in glob.glob(os.path.join(folder, 'round_*.json')):
    os.remove(path)
  assert evaluate.run(_eval_config(), workdir) == rows
  assert read()['sampled_by'] == first['sampled_by']
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)
  del results['provenance']['sampled_by']
  results['provenance']['commit'] = 'a' * 40
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(results, f)
  assert evaluate.run(_eval_config(), workdir) == rows
  assert {(r['commit'], r['seconds']) for r in read()['sampled_by'].values()} == {('a' * 40, None)}
  os.remove(os.path.join(folder, 'results.json'))
  assert evaluate.run(_eval_config(), workdir) == rows
  assert set(read()['sampled_by'].values()) == {None}
