"""Tests of cfg/sweep.py's cost estimate: the exact NFE per image of each job's sampler, method and grid."""

import os

from cfg import sweep
from configs import smoke

# smoke: 20 samples at each of the weights (0, 1), so 40 images per evaluation.
IMAGES = 40


def _costs(tmp_path, field, values, base_overrides=()):
  planned = sweep.plan(smoke.get_config(), sweep.Sweep(field, values, train=False,
                                                       base_overrides=base_overrides), str(tmp_path))
  return {dict(job.overrides)[field]: cost for job, _, cost in planned}


def test_cost_counts_each_solver_s_evaluations(tmp_path):
  # T = 4 levels, every level guided (a 2B call counts 2): ancestral evaluates all 4 levels, DDIM and
  # DPM-Solver++ the 3 before λ_max, Heun twice on each of its 3 steps.
  costs = _costs(tmp_path, 'sampling.sampler', ('ancestral', 'ddim', 'dpmpp_2m', 'heun'))
  expected = {'ancestral': 2 * 4, 'ddim': 2 * 3, 'dpmpp_2m': 2 * 3, 'heun': 2 * 2 * 3}
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
  # sampling.nfe = 16 unguided evaluations: Heun takes 8 steps (T = 9), 32 with the guiding branch.
  costs = _costs(tmp_path, 'sampling.nfe', (16,), (('sampling.sampler', 'heun'),))
  assert (costs[16]['num_steps'], costs[16]['nfe_per_image']) == (9, 32)
  assert costs[16]['image_nfe'] == 32 * IMAGES


def test_dry_run_prints_the_image_nfe_and_the_commands(tmp_path):
  config = smoke.get_config()
  planned = sweep.plan(config, sweep.Sweep('diffusion.p_uncond', (0.1,)), str(tmp_path))
  text = sweep.format_plan(planned, 'configs/smoke.py')
  # ddim T = 4: 3 guided levels, 6 evaluations per image, 240 for the 40 images.
  assert f'train_steps={config.train.num_steps}' in text
  assert 'nfe_per_image=6, image_nfe=240' in text
  workdir = os.path.join(str(tmp_path), 'diffusion.p_uncond=0.1')
  assert f'--workdir={workdir} --config.mode=eval' in text
