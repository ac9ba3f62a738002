"""Tests of the sampler loop's guidance plan: the network evaluations a plan really executes (NFE),
the skipped unconditional call, retracing, and interval moments, with the analytic denoisers of
tests/test_samplers.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg import samplers
from tests.test_samplers import (
    DIM, IMAGE_SHAPE, SAMPLERS, SMALL_LABELS, SMALL_MEANS, SMALL_STD, SMALL_STEPS, _small_denoise,
    gaussian_denoiser, mixture_denoiser, reference_moments)


def _counting_denoise(batch_sizes):
  def denoise(z, logsnr, labels):
    jax.debug.callback(lambda z: batch_sizes.append(z.shape[0]), z)
    return mixture_denoiser(SMALL_MEANS, SMALL_STD)(z, logsnr, labels)
  return denoise


ALL_SOLVERS = ['ancestral', 'ddim', 'dpmpp_2m', 'heun']
ALL_METHODS = ['cfg', 'interval', 'schedule', 'rescale', 'threshold', 'apg', 'cfgpp', 'cfg_zero_star',
               'autoguidance']
# λ on the default T = 8 uniform-u grid: −20, −2.95, −1.46, −0.45, 0.45, 1.46, 2.95, 20.
INTERVAL = dict(logsnr_lo=-2.0, logsnr_hi=1.0)


@pytest.mark.parametrize('method, solver', [  # CFG++ is DDIM only (its error is tested above)
    (m, s) for m in ALL_METHODS for s in ALL_SOLVERS if m != 'cfgpp' or s == 'ddim'])
def test_executed_network_evaluations_equal_count_evaluations(solver, method):
  batch_sizes, guide_sizes = [], []
  params = samplers.GuidanceParams(w=1.5, rescale=0.5, **INTERVAL)
  guide = _counting_denoise(guide_sizes) if method == 'autoguidance' else None
  x = samplers.sample(_counting_denoise(batch_sizes), key=jax.random.key(0), labels=SMALL_LABELS,
                      image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS, null_label=3, params=params,
                      method=method, solver=solver, guide_denoise=guide)
  jax.block_until_ready(x)
  jax.effects_barrier()
  assert np.all(np.isfinite(np.asarray(x)))
  nfe = samplers.count_evaluations(solver=solver, method=method, num_steps=SMALL_STEPS,
                                   params=params)
  batch = len(SMALL_LABELS)
  if method == 'autoguidance':  # two networks, each called with batch B at every evaluation
    assert batch_sizes == [batch] * nfe.main and guide_sizes == [batch] * nfe.ref
    batch_sizes = [2 * batch] * nfe.ref
  assert sum(batch_sizes) == nfe.total * batch  # a 2B call is 2 evaluations per image
  steps = SMALL_STEPS if solver == 'ancestral' else SMALL_STEPS - 1
  evals = steps * (2 if solver == 'heun' else 1) - (solver == 'heun')  # Heun's last step: Euler
  # Exact numbers: the interval [−2, 1] holds 3 of the 8 grid levels (λ = −1.46, −0.45, 0.45), not
  # the last step's.
  guided = (3 * (2 if solver == 'heun' else 1) if method == 'interval' else evals)
  assert nfe == (evals, guided)
  # The skip is real: outside the interval the call has batch B, inside 2B.
  assert batch_sizes.count(2 * batch) == nfe.ref
  assert batch_sizes.count(batch) == nfe.main - nfe.ref


def test_skipping_the_reference_call_equals_guiding_with_zero_weight_outside():
  # The skip changes cost, not maths: the interval method against an all-guided program whose
  # weight is w · 1[λ_lo ≤ λ ≤ λ_hi] (guidance.interval_weight).
  from cfg import guidance
  no_skip = guidance.Method(weight=guidance.interval_weight)
  params = samplers.GuidanceParams(w=jnp.linspace(0.0, 3.0, 8), **INTERVAL)
  # Gaussian c and ∅: ε is elementwise in z, so batch B and 2B give the same values per row (up to
  # an ulp where XLA fuses the two programs differently).
  denoise = gaussian_denoiser([np.full(DIM, 0.5), np.linspace(-0.3, 0.3, DIM)], [0.4, 0.7])
  for solver in ('ancestral', 'ddim'):
    run = lambda method: samplers.sample(
        denoise, key=jax.random.key(1), labels=jnp.zeros(8, jnp.int32), image_shape=IMAGE_SHAPE,
        num_steps=SMALL_STEPS, null_label=1, params=params, method=method, solver=solver)
    np.testing.assert_allclose(run('interval'), run(no_skip), rtol=1e-6, atol=1e-7)
    assert not np.allclose(run('interval'), run('cfg'), atol=1e-3)
  # Over the whole range the interval is cfg: the same arithmetic inside an XLA Conditional, which
  # XLA fuses differently (observed: one element of 128 off by one ulp).
  whole = samplers.GuidanceParams(w=params.w, logsnr_lo=-20.0, logsnr_hi=20.0)
  full = lambda method: samplers.sample(
      _small_denoise, key=jax.random.key(1), labels=SMALL_LABELS, image_shape=IMAGE_SHAPE,
      num_steps=SMALL_STEPS, null_label=3, params=whole, method=method, solver='ancestral')
  np.testing.assert_allclose(full('interval'), full('cfg'), rtol=1e-6, atol=1e-7)


def test_changing_any_guidance_parameter_does_not_retrace_and_a_sweep_is_one_program():
  traces = []

  def denoise(z, logsnr, labels):
    traces.append(z.shape)
    return mixture_denoiser(SMALL_MEANS, SMALL_STD)(z, logsnr, labels)

  run = jax.jit(lambda params: samplers.sample(
      denoise, key=jax.random.key(0), labels=SMALL_LABELS, image_shape=IMAGE_SHAPE,
      num_steps=SMALL_STEPS, null_label=3, params=params, method='apg', solver='ddim'))
  first = run(samplers.GuidanceParams(w=1.0))
  count = len(traces)
  for change in (dict(w=2.0), dict(apg_eta=0.0), dict(apg_beta=-0.5), dict(apg_norm_cap=0.05)):
    out = run(samplers.GuidanceParams(**dict(dict(w=1.0), **change)))
    assert not np.allclose(out, first, atol=1e-4), change
  assert len(traces) == count
  interval = jax.jit(lambda params: samplers.sample(
      denoise, key=jax.random.key(0), labels=SMALL_LABELS, image_shape=IMAGE_SHAPE,
      num_steps=SMALL_STEPS, null_label=3, params=params, method='interval', solver='ddim'))
  interval(samplers.GuidanceParams(w=1.0, **INTERVAL))
  count = len(traces)
  interval(samplers.GuidanceParams(w=1.0, logsnr_lo=-8.0, logsnr_hi=0.0))
  assert len(traces) == count
  # A sweep over a params pytree: swept leaves [K], shared scalars; one program equals the loop.
  sweep_params = samplers.GuidanceParams(w=jnp.array([0.5, 2.0]), apg_eta=jnp.array([1.0, 0.0]),
                                         apg_beta=-0.25)
  sampler = functools.partial(samplers.sample, _small_denoise, key=jax.random.key(0),
                              labels=SMALL_LABELS, image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS,
                              null_label=3, method='apg', solver='ddim')
  swept = jax.jit(lambda p: samplers.sample_sweep(sampler, params=p))(sweep_params)
  for k in range(2):
    single = sampler(params=samplers.GuidanceParams(w=sweep_params.w[k],
                                                    apg_eta=sweep_params.apg_eta[k], apg_beta=-0.25))
    np.testing.assert_allclose(swept[k], single, rtol=1e-5, atol=1e-5)


def test_a_weight_sweep_keeps_the_interval_skip():
  batch_sizes = []
  sampler = functools.partial(samplers.sample, _counting_denoise(batch_sizes), key=jax.random.key(0),
                              labels=SMALL_LABELS, image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS,
                              null_label=3, method='interval', solver='ancestral')
  params = samplers.GuidanceParams(w=jnp.array([0.0, 1.0, 2.0]), **INTERVAL)
  jax.block_until_ready(jax.jit(lambda p: samplers.sample_sweep(sampler, params=p))(params))
  jax.effects_barrier()
  # vmap over w: the flag stays unbatched, so the cond stays a cond (3 guided levels of 8; the
  # callback runs once per swept row). A select would run both branches at all 8 levels.
  assert sorted(batch_sizes) == sorted([8] * 3 * 5 + [16] * 3 * 3)


def test_method_state_starts_from_init_every_call():
  sampler = functools.partial(samplers.sample, _small_denoise, labels=SMALL_LABELS,
                              image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS, null_label=3,
                              method='apg', solver='ddim',
                              params=samplers.GuidanceParams(w=2.0, apg_beta=0.5))
  np.testing.assert_array_equal(sampler(key=jax.random.key(3)), sampler(key=jax.random.key(3)))


@pytest.mark.parametrize('name', SAMPLERS)
def test_interval_gaussian_moments_match_the_exact_recursion(name):
  # Guided only on the levels inside [λ_lo, λ_hi] (the conditional model elsewhere, its call skipped).
  num_steps, count, w = 24, 2048, 3.0
  mean_cond, mean_uncond = 0.5 * np.ones(DIM), np.linspace(-0.3, 0.3, DIM)
  denoise = gaussian_denoiser([mean_cond, mean_uncond], [0.4, 0.7])
  # The noisy part only: the result differs from both full CFG and none. (lo below λ_1: the float64
  # reference grid puts λ_1 a rounding error below −20, the sampler counts a bound within 1e-4 in.)
  lo, hi = -21.0, -1.0
  x = samplers.get_sampler(name)(
      denoise, key=jax.random.key(6), labels=jnp.zeros(count, jnp.int32), image_shape=IMAGE_SHAPE,
      num_steps=num_steps, null_label=1, method='interval',
      params=samplers.GuidanceParams(w=w, logsnr_lo=lo, logsnr_hi=hi))
  x = np.asarray(x).reshape(count, DIM)
  mean_ref, var_ref = reference_moments(
      name, num_steps=num_steps, guidance_weight=lambda logsnr: w if lo <= logsnr <= hi else 0.0,
      mean_cond=mean_cond, std_cond=0.4, mean_uncond=mean_uncond, std_uncond=0.7,
      variance_interp=0.3)
  for other in (w, 0.0):  # the interval matters: full CFG or none would fail a check below
    other_mean, other_var = reference_moments(name, num_steps=num_steps, guidance_weight=other,
                                              mean_cond=mean_cond, std_cond=0.4,
                                              mean_uncond=mean_uncond, std_uncond=0.7)
    assert (np.abs(other_mean - mean_ref).max() > 0.05
            or not 0.9 < other_var / var_ref < 1.1), (other, other_mean, other_var)
  np.testing.assert_allclose(x.mean(0), mean_ref, atol=4 * np.sqrt(var_ref / count) + 1e-3)
  np.testing.assert_allclose(x.var(0).mean(), var_ref, rtol=0.05)
