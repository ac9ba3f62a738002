"""Tests of cfg/solvers.py: the ODE solvers against the probability-flow ODE, orders of accuracy, grids.

Gaussian data N(μ_c, s_c² I) with a Gaussian ∅ make the guided ε affine in z. In EDM's variables
ẑ = z/α, σ_e = σ/α = e^{−λ/2}, the exact conditional ε is σ_e (ẑ − μ)/(s² + σ_e²), and the guided
probability-flow ODE dẑ/dσ_e = ε̃(ẑ, σ_e) is linear; scipy's DOP853 at rtol 1e-12 integrates it from
the sampler's own initial noise, so each solver's pathwise error is measured against an
independent reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from cfg import guidance, samplers, solvers
from tests.test_samplers import DIM, IMAGE_SHAPE, gaussian_denoiser, reference_grid

MEAN_COND, MEAN_UNCOND = 0.5 * np.ones(DIM), np.linspace(-0.3, 0.3, DIM)
STD_COND, STD_UNCOND = 0.4, 0.7
WEIGHT, BATCH, KEY = 1.0, 4, jax.random.key(3)
LOGSNR_MIN, LOGSNR_MAX = -10.0, 10.0
DENOISE = gaussian_denoiser([MEAN_COND, MEAN_UNCOND], [STD_COND, STD_UNCOND])


def reference_ode_end(grid, weight=lambda logsnr: WEIGHT):
  """ẑ at λ_T from the sampler's z at λ_1, by solve_ivp on dẑ/d log σ_e = σ_e ε̃ (float64);
  `weight` is w(λ)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(BATCH))
  z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), IMAGE_SHAPE))(keys)
  z = np.asarray(z, np.float64).reshape(BATCH, -1)

  def velocity(log_sigma, flat):
    s, y = np.exp(log_sigma), flat.reshape(BATCH, -1)
    w = weight(-2.0 * log_sigma)
    eps = ((1 + w) * s * (y - MEAN_COND) / (STD_COND**2 + s**2)
           - w * s * (y - MEAN_UNCOND) / (STD_UNCOND**2 + s**2))
    return (s * eps).ravel()

  start = z / np.sqrt(1 / (1 + np.exp(-grid[0])))
  solution = solve_ivp(velocity, (-grid[0] / 2, -grid[-1] / 2), start.ravel(), method='DOP853',
                       rtol=1e-12, atol=1e-12)
  assert solution.success
  return solution.y[:, -1].reshape(BATCH, -1)


def _linear_ramp(logsnr):
  """The `schedule` method's linear w(λ) = 2w(1 − u(λ)), u on the default λ ∈ [−20, 20] (float64)."""
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  return 2 * WEIGHT * (1 - (np.arctan(np.exp(-0.5 * logsnr)) - b) / a)


def _error(solver, grid_name, num_steps, schedule=None):
  method = 'cfg' if schedule is None else guidance.get_method('schedule', schedule=schedule)
  x = samplers.sample(DENOISE, key=KEY, labels=jnp.zeros(BATCH, jnp.int32), image_shape=IMAGE_SHAPE,
                      num_steps=num_steps, null_label=1, guidance_weight=WEIGHT, solver=solver,
                      method=method, grid=grid_name, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX)
  grid = np.asarray(solvers.get_grid(grid_name)(num_steps, logsnr_min=LOGSNR_MIN,
                                                logsnr_max=LOGSNR_MAX), np.float64)
  reference = reference_ode_end(grid, *([] if schedule is None else [_linear_ramp]))
  return np.abs(np.asarray(x, np.float64).reshape(BATCH, -1) - reference).max()


@pytest.mark.parametrize('solver, grid_name, order', [
    ('ddim', 'uniform_logsnr', 1), ('dpmpp_2m', 'uniform_logsnr', 2), ('heun', 'uniform_logsnr', 2),
    ('dpmpp_2m', 'edm', 2), ('heun', 'edm', 2)])
def test_solvers_converge_to_the_probability_flow_ode_at_their_order(solver, grid_name, order):
  # Steps 16 → 32 → 64 (T = steps + 1 levels); the error ratio per doubling is 2^order.
  errors = np.array([_error(solver, grid_name, steps + 1) for steps in (16, 32, 64)])
  measured = np.log2(errors[:-1] / errors[1:])
  assert np.all(np.abs(measured - order) < 0.2), (errors, measured)
  assert errors[-1] < (0.05 if order == 1 else 0.005), errors


@pytest.mark.parametrize('solver, order', [('ddim', 1), ('dpmpp_2m', 2), ('heun', 2)])
def test_a_weight_schedule_is_applied_at_each_evaluation_s_own_level(solver, order):
  # w(λ) varies along the ODE; Heun's second evaluation must use w(λ'), or it falls to order 1.
  errors = np.array([_error(solver, 'uniform_logsnr', steps + 1, schedule='linear')
                     for steps in (32, 64, 128)])  # DPM-Solver++ is pre-asymptotic at 16 here
  measured = np.log2(errors[:-1] / errors[1:])
  assert np.all(np.abs(measured - order) < 0.2), (errors, measured)


def test_dpmpp_2m_first_step_is_ddim():
  # With T = 2 there is one step, first-order: z' = (σ'/σ) z − α'(e^{−h} − 1) x̂ = α' x̂ + σ' ε̂.
  run = lambda solver: samplers.sample(
      DENOISE, key=KEY, labels=jnp.zeros(BATCH, jnp.int32), image_shape=IMAGE_SHAPE, num_steps=2,
      null_label=1, guidance_weight=WEIGHT, solver=solver, logsnr_min=-3.0, logsnr_max=4.0)
  np.testing.assert_allclose(run('dpmpp_2m'), run('ddim'), rtol=1e-5, atol=1e-5)


def test_ddim_with_eta_one_is_ancestral_with_posterior_variance():
  # η = 1: z' = α' x̂ + σ'√r ε̂ + σ̃ ξ = μ̃(z, x̂) + σ̃ ξ, r = e^{λ−λ'}: Algorithm 2 with v = 0, and the
  # same noise draws. DDIM ends at z_T/α_T, ancestral evaluates λ_T once more; compare the walk
  # on a grid whose last level is clean enough that both agree.
  labels = jnp.zeros(BATCH, jnp.int32)
  common = dict(key=KEY, labels=labels, image_shape=IMAGE_SHAPE, num_steps=12, null_label=1,
                guidance_weight=WEIGHT, logsnr_min=-8.0, logsnr_max=16.0)
  ddim = samplers.ddim_sample(DENOISE, eta=1.0, **common)
  ancestral = samplers.ancestral_sample(DENOISE, variance_interp=0.0, **common)
  np.testing.assert_allclose(ddim, ancestral, atol=2e-3)
  deterministic = samplers.ddim_sample(DENOISE, eta=0.0, **common)
  assert np.abs(np.asarray(ddim - deterministic)).max() > 0.05


def test_grids_span_the_range_and_follow_their_formulas():
  steps, lo, hi = 9, -12.0, 8.0
  np.testing.assert_allclose(solvers.uniform_u_grid(steps, logsnr_min=lo, logsnr_max=hi),
                             reference_grid(steps, lo, hi), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(solvers.uniform_logsnr_grid(steps, logsnr_min=lo, logsnr_max=hi),
                             np.linspace(lo, hi, steps), atol=1e-5)
  # EDM: σ_i = (σ_max^{1/7} + i/(N − 1)(σ_min^{1/7} − σ_max^{1/7}))^7 with σ = e^{−λ/2}, from EDM's
  # σ_max = 80 when λ_min lies below −2 log 80 (here e^6 = 403 would be the top), else e^{−λ_min/2}.
  for bottom, sigma_max in ((lo, 80.0), (-6.0, np.exp(3.0))):
    sigma_min = np.exp(-hi / 2)
    ramp = np.linspace(0, 1, steps)
    sigmas = (sigma_max**(1 / 7) + ramp * (sigma_min**(1 / 7) - sigma_max**(1 / 7)))**7
    np.testing.assert_allclose(solvers.edm_grid(steps, logsnr_min=bottom, logsnr_max=hi),
                               -2 * np.log(sigmas), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(solvers.edm_sigma_to_logsnr(jnp.array([0.28, 2.9])),
                             -2 * np.log([0.28, 2.9]), rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown sampling grid 'cosine'"):
    solvers.get_grid('cosine')


def test_stochastic_ddim_moments_match_the_exact_recursion():
  # DDIM η: every step is linear-Gaussian for Gaussian c and ∅, so the x̂ moments follow a closed
  # recursion: z' = α' x̃ + √(σ'² − η²σ̃²) ε̃ + η σ̃ ξ with ε̃ = A z − c.
  num_steps, eta, count = 16, 0.5, 4096
  x = samplers.ddim_sample(DENOISE, eta=eta, key=jax.random.key(8),
                           labels=jnp.zeros(count, jnp.int32), image_shape=IMAGE_SHAPE,
                           num_steps=num_steps, null_label=1, guidance_weight=WEIGHT)
  x = np.asarray(x).reshape(count, DIM)
  grid = reference_grid(num_steps)
  mean, var = np.zeros(DIM), 1.0
  for t in range(num_steps - 1):
    a2, s2 = 1 / (1 + np.exp(-grid[t])), 1 / (1 + np.exp(grid[t]))
    a, s = np.sqrt(a2), np.sqrt(s2)
    v_c, v_u = a2 * STD_COND**2 + s2, a2 * STD_UNCOND**2 + s2
    slope = s * ((1 + WEIGHT) / v_c - WEIGHT / v_u)
    offset = s * a * ((1 + WEIGHT) * MEAN_COND / v_c - WEIGHT * MEAN_UNCOND / v_u)
    x_slope, x_offset = (1 - s * slope) / a, s * offset / a
    a2n, s2n = 1 / (1 + np.exp(-grid[t + 1])), 1 / (1 + np.exp(grid[t + 1]))
    posterior = (1 - np.exp(grid[t] - grid[t + 1])) * s2n
    direction = np.sqrt(s2n - eta**2 * posterior)
    z_slope = np.sqrt(a2n) * x_slope + direction * slope
    z_offset = np.sqrt(a2n) * x_offset - direction * offset
    mean, var = z_slope * mean + z_offset, z_slope**2 * var + eta**2 * posterior
  alpha_last = np.sqrt(1 / (1 + np.exp(-grid[-1])))
  mean, var = mean / alpha_last, var / alpha_last**2
  np.testing.assert_allclose(x.mean(0), mean, atol=4 * np.sqrt(var / count) + 1e-3)
  np.testing.assert_allclose(x.var(0).mean(), var, rtol=0.03)


@pytest.mark.parametrize('per_step', [False, True])
def test_heun_advances_the_guidance_state_per_evaluation_or_per_step(per_step):
  # A predictor whose x̂ is the state it reads and which counts evaluations in its state: the second
  # evaluation reads 1 (per evaluation) or 0 (per step), and the step hands on 2 or 1.
  def predict(z, logsnr, state, guided):
    del logsnr, guided
    return guidance.Pred(eps=jnp.zeros_like(z), x=jnp.full_like(z, state)), state + 1.0

  z = jnp.ones((2, 3))
  lv = solvers.Level(index=jnp.asarray(0), logsnr=jnp.asarray(-1.0), logsnr_next=jnp.asarray(1.0),
                     guided=None, last=jnp.asarray(False))
  carry = solvers.Carry(z=z, x=jnp.zeros_like(z), solver=(), guide=jnp.asarray(0.0))
  out = jax.jit(lambda c: solvers.heun_level(
      predict, carry=c, lv=lv, params=solvers.SolverParams(guide_state_per_step=per_step),
      draw_noise=None))(carry)
  np.testing.assert_array_equal(out.x, 0.0 if per_step else 1.0)  # the second evaluation's x̂
  assert float(out.guide) == (1.0 if per_step else 2.0)


def test_heun_with_apg_momentum_differs_between_the_two_state_orders_and_cfg_does_not():
  run = lambda method, per_step, **p: samplers.sample(
      DENOISE, key=KEY, labels=jnp.zeros(BATCH, jnp.int32), image_shape=IMAGE_SHAPE, num_steps=9,
      null_label=1, params=guidance.GuidanceParams(w=2.0, **p), solver='heun', method=method,
      solver_params=solvers.SolverParams(guide_state_per_step=per_step), grid='edm')
  apg = dict(apg_eta=0.0, apg_beta=-0.5)
  assert np.abs(np.asarray(run('apg', False, **apg)) - np.asarray(run('apg', True, **apg))).max() > 1e-3
  np.testing.assert_array_equal(run('cfg', False), run('cfg', True))  # cfg has no state
