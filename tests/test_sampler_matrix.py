"""Every sampler × guidance method against an independent float64 reference, for Gaussian class data.

Class c is N(μ_c, s_c² I), the null label ∅ is N(μ_u, s_u² I), and autoguidance's guide network is the
exact denoiser of another Gaussian N(μ_g, s_g² I) called with the same label; every ε is the exact
ε(z, λ) = σ (z − α μ)/(α² s² + σ²) (`gaussian_denoiser`), so the guided ε of cfg, interval, schedule,
CFG++ and autoguidance is affine in z. The references are float64 numpy written from the formulas of
paper.md §8 and the README's method table, never calls into cfg.guidance or cfg.solvers. Every sampler
walks EDM's ρ = 7 grid on λ ∈ [−10, 10], whose steps differ in length (DPM-Solver++'s ratio r ≠ 1):

- the ODE solvers (ddim with η = 0, dpmpp_2m, heun) × the methods whose guided prediction is a function
  of (z, λ) alone: pathwise against scipy's DOP853 (rtol = atol = 1e-12) on the guided probability-flow
  ODE dẑ/d log σ_e = σ_e ε̂(α ẑ, λ) in ẑ = z/α, σ_e = e^{−λ/2}, from the sampler's own initial noise;
  the error at 128 steps is small and falls from 64 to 128 steps at the solver's order;
- the affine methods with ancestral sampling or DDIM η > 0, and CFG++ with DDIM: the exact
  linear-Gaussian moment recursion; sample means and variances within 4.5 standard errors;
- the nonlinear methods (rescale, threshold, APG, CFG-Zero*) with ancestral sampling or DDIM η > 0,
  and APG with momentum (a state carried from step to step) on every solver: a float64 re-implementation
  of the sampler recursion driven by the documented noise draws (cfg/samplers.py), pathwise.

Pairs that are not defined (CFG++ with ancestral, dpmpp_2m or heun) raise the project's errors.
Compiles dominate the run time, so ONE program holds every sampler run of the file (`sampled`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from cfg import guidance, samplers, solvers
from cfg.config_checks import ConfigError, check_config
from configs import smoke
from tests.test_samplers import DIM, IMAGE_SHAPE, gaussian_denoiser

_SIGNS = np.random.default_rng(0).choice([-1.0, 1.0], size=DIM)
MEAN_COND, STD_COND = 1.2 * _SIGNS, 0.3  # |x̂| > 1 often, so dynamic thresholding acts
MEAN_UNCOND, STD_UNCOND = np.linspace(-0.4, 0.4, DIM), 0.8
MEAN_GUIDE, STD_GUIDE = 0.7 * MEAN_COND + 0.1, 0.5  # autoguidance: a different, weaker model of c
DENOISE = gaussian_denoiser([MEAN_COND, MEAN_UNCOND], [STD_COND, STD_UNCOND])  # ∅ = label 1
GUIDE_DENOISE = gaussian_denoiser([MEAN_GUIDE], [STD_GUIDE])
LOGSNR_MIN, LOGSNR_MAX, GRID = -10.0, 10.0, 'edm'
KEY = jax.random.key(5)
STEPS = 64  # the T − 1 every test samples at; the ODE tests also at 2 · STEPS
COUNT = 4096  # examples at STEPS (moments); the pathwise tests compare the first PATHS of them
PATHS = 4
ETA = 0.5  # the stochastic DDIM
VARIANCE_INTERP = 0.3  # ancestral v
W = 1.5


class Variant(NamedTuple):
  """A guidance method (a cfg.guidance.METHODS name) with its numbers (GuidanceParams fields)."""
  method: str
  params: dict
  schedule: str = 'constant'


VARIANTS = {
    'cfg': Variant('cfg', dict(w=W)),
    # σ_e ∈ [1, 12.2]; no level of the grids lies within 0.01 of a bound.
    'interval': Variant('interval', dict(w=W, logsnr_lo=-5.0, logsnr_hi=0.0)),
    'schedule': Variant('schedule', dict(w=W), schedule='cosine'),
    'rescale': Variant('rescale', dict(w=W, rescale=0.7)),
    'threshold': Variant('threshold', dict(w=W, percentile=90.0)),
    # r = 2 caps ‖Δ‖ at about half the evaluations along these paths.
    'apg': Variant('apg', dict(w=W, apg_eta=0.3, apg_norm_cap=2.0)),
    'apg_momentum': Variant('apg', dict(w=W, apg_eta=0.3, apg_norm_cap=2.0, apg_beta=-0.5)),
    'cfg_zero_star': Variant('cfg_zero_star', dict(w=W)),
    'autoguidance': Variant('autoguidance', dict(w=W)),
    'cfgpp': Variant('cfgpp', dict(w=-0.5)),  # CFG++'s λ = s = 1 + w ∈ [0, 1]
}
# What each variant's result must differ from, so that no test passes with the method left out:
# plain CFG at the variant's w (CFG itself: the conditional model; APG with momentum: without).
REFERENCES = dict(VARIANTS, conditional=Variant('cfg', dict(w=0.0)),
                  cfg_negative=Variant('cfg', dict(w=-0.5)))
CONTRAST = dict({name: 'cfg' for name in VARIANTS}, cfg='conditional', cfgpp='cfg_negative',
                apg_momentum='apg')
ODE_SOLVERS = ('ddim', 'dpmpp_2m', 'heun')
# Guided prediction a function of (z, λ) alone: the sampler discretises a probability-flow ODE.
ODE_VARIANTS = ('cfg', 'interval', 'schedule', 'rescale', 'threshold', 'apg', 'cfg_zero_star',
                'autoguidance')
AFFINE_VARIANTS = ('cfg', 'interval', 'schedule', 'autoguidance', 'cfgpp')
NONLINEAR_VARIANTS = ('rescale', 'threshold', 'apg', 'apg_momentum', 'cfg_zero_star')
UNDEFINED = (('ancestral', 'cfgpp'), ('dpmpp_2m', 'cfgpp'), ('heun', 'cfgpp'))


# The pairs and how each is checked (η: DDIM's; ancestral uses v = VARIANCE_INTERP).
ODE_PAIRS = [(s, n) for s in ODE_SOLVERS for n in ODE_VARIANTS]
AFFINE_PAIRS = ([('ancestral', 0.0, n) for n in AFFINE_VARIANTS if n != 'cfgpp']
                + [('ddim', ETA, n) for n in AFFINE_VARIANTS] + [('ddim', 0.0, 'cfgpp')])
NONLINEAR_PAIRS = ([(s, eta, n) for s, eta in (('ancestral', 0.0), ('ddim', ETA))
                    for n in NONLINEAR_VARIANTS]
                   + [(s, 0.0, 'apg_momentum') for s in ODE_SOLVERS])


# ----------------------------------------------------------------------------------------------
# The samplers under test: ONE program holding every run, each with its own batch.

def _runs():
  """{(solver, η, steps, variant): batch}: COUNT examples where moments are taken, else PATHS."""
  runs = {(s, 0.0, steps, n): PATHS for s, n in ODE_PAIRS for steps in (STEPS, 2 * STEPS)}
  runs.update({(s, eta, STEPS, n): PATHS for s, eta, n in NONLINEAR_PAIRS})
  runs.update({(s, eta, STEPS, n): COUNT for s, eta, n in AFFINE_PAIRS})
  return runs


@functools.cache
def sampled():
  """{(solver, η, steps, variant): x̂ [batch, DIM] float64} on `steps` + 1 grid levels, from one
  compiled program; every guidance number is traced, η and v are static."""
  def run(params):
    return {(solver, eta, steps, name): samplers.sample(
        DENOISE, key=KEY, labels=jnp.zeros(batch, jnp.int32), image_shape=IMAGE_SHAPE,
        num_steps=steps + 1, null_label=1, params=params[name],
        method=guidance.get_method(VARIANTS[name].method, schedule=VARIANTS[name].schedule),
        solver=solver, grid=GRID, solver_params=solvers.SolverParams(VARIANCE_INTERP, eta),
        guide_denoise=GUIDE_DENOISE if name == 'autoguidance' else None,
        logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX)
            for (solver, eta, steps, name), batch in _runs().items()}

  params = {name: samplers.GuidanceParams(**{
      field: jnp.float32(value) for field, value in
      samplers.GuidanceParams(**variant.params)._asdict().items()})
            for name, variant in VARIANTS.items()}
  return {run_key: np.asarray(x, np.float64).reshape(len(x), DIM)
          for run_key, x in jax.jit(run)(params).items()}


def reference_grid(steps):
  """EDM's λ_i = −2 log σ_i, σ_i = (σ_max^{1/ρ} + (i/steps)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7,
  σ_max = min(80, e^{−λ_min/2}) = 80 here, σ_min = e^{−λ_max/2}, i = 0 … steps (float64)."""
  first, last = min(80.0, np.exp(-LOGSNR_MIN / 2))**(1 / 7), np.exp(-LOGSNR_MAX / 14)
  return -14 * np.log(first + np.linspace(0, 1, steps + 1) * (last - first))


@functools.cache
def documented_noise(steps):
  """[steps + 2, PATHS, DIM]: example i's draw t is N(0, I) from fold_in(fold_in(KEY, i), t); draw 0
  is the initial z, draw t + 1 the noise of step t."""
  def draw(i, t):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(KEY, i), t), IMAGE_SHAPE)
  noise = jax.vmap(lambda t: jax.vmap(lambda i: draw(i, t))(jnp.arange(PATHS)))(
      jnp.arange(steps + 2))
  return np.asarray(noise, np.float64).reshape(steps + 2, PATHS, DIM)


# ----------------------------------------------------------------------------------------------
# Float64 references of the guided prediction (README method table, paper.md §8).

def _alpha_sigma(logsnr):
  """α = sigmoid(λ)^{1/2}, σ = sigmoid(−λ)^{1/2}."""
  return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def _gaussian_eps(z, logsnr, *, mean, std):
  """ε(z, λ) = σ (z − α μ)/(α² s² + σ²), the exact ε of N(μ, s² I)."""
  alpha, sigma = _alpha_sigma(logsnr)
  return sigma * (z - alpha * mean) / (alpha**2 * std**2 + sigma**2)


def _dot(a, b):
  """⟨a, b⟩ per example (rows), kept as a column."""
  return np.sum(a * b, axis=-1, keepdims=True)


def _cosine_ramp(logsnr):
  """w(1 + cos π u(λ)), u(λ) = (arctan e^{−λ/2} − b)/a on the default λ ∈ [−20, 20]."""
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  return 1 + np.cos(np.pi * (np.arctan(np.exp(-0.5 * logsnr)) - b) / a)


def guided_level(name, logsnr):
  """Whether the sampler guides the level λ: interval λ_lo ≤ λ ≤ λ_hi, every level otherwise."""
  variant = REFERENCES[name]
  return (variant.method != 'interval'
          or variant.params['logsnr_lo'] <= logsnr <= variant.params['logsnr_hi'])


def reference_prediction(name, z, logsnr, *, guided=True, state=None):
  """(x̃, ε̂, state) of variant `name` at z [PATHS, DIM] and λ.

  Branches ε_c and ε_u (the guide for autoguidance); ε̃ = (1 + w) ε_c − w ε_u with w(λ),
  x̃ = (z − σ ε̃)/α; rescale ε̂ = φ ε̃ std(ε_c)/std(ε̃) + (1 − φ) ε̃; threshold s = max(1, P_p |x̃|),
  x̃ ← clip(x̃, −s, s)/s; APG Δ = x_c − x_u + β Δ₋, Δ_r = Δ min(1, r/‖Δ‖), Δ∥ = ⟨Δ_r, x_c⟩/‖x_c‖² x_c,
  x̃ = x_c + w (Δ_r − Δ∥ + η Δ∥); CFG-Zero* s* = ⟨ε_c, ε_u⟩/‖ε_u‖², ε̃ = (1 + w) ε_c − w s* ε_u;
  CFG++ re-noises with ε_u. ε̂ = (z − α x̃)/σ wherever x̃ is set.
  """
  variant, p = REFERENCES[name], REFERENCES[name].params
  alpha, sigma = _alpha_sigma(logsnr)
  w = p['w'] * (_cosine_ramp(logsnr) if variant.schedule == 'cosine' else 1.0) * guided
  eps_c = _gaussian_eps(z, logsnr, mean=MEAN_COND, std=STD_COND)
  mean_u, std_u = ((MEAN_GUIDE, STD_GUIDE) if variant.method == 'autoguidance'
                   else (MEAN_UNCOND, STD_UNCOND))
  eps_u = _gaussian_eps(z, logsnr, mean=mean_u, std=std_u)
  if variant.method == 'cfg_zero_star':
    eps_u = _dot(eps_c, eps_u) / _dot(eps_u, eps_u) * eps_u
  eps = (1 + w) * eps_c - w * eps_u
  if variant.method == 'rescale':
    eps = p['rescale'] * eps * eps_c.std(-1, keepdims=True) / eps.std(-1, keepdims=True) + (
        1 - p['rescale']) * eps
  x = (z - sigma * eps) / alpha
  if variant.method == 'threshold':
    s = np.maximum(1.0, np.percentile(np.abs(x), p['percentile'], axis=-1, keepdims=True))
    x = np.clip(x, -s, s) / s
  if variant.method == 'apg':
    x_c, x_u = (z - sigma * eps_c) / alpha, (z - sigma * eps_u) / alpha
    state = x_c - x_u + p.get('apg_beta', 0.0) * (0.0 if state is None else state)
    capped = state * np.minimum(1.0, p['apg_norm_cap'] / np.sqrt(_dot(state, state)))
    parallel = _dot(capped, x_c) / _dot(x_c, x_c) * x_c
    x = x_c + w * (capped - parallel + p['apg_eta'] * parallel)
  eps = (z - alpha * x) / sigma
  return x, (eps_u if variant.method == 'cfgpp' else eps), state


# ----------------------------------------------------------------------------------------------
# References of the samplers: the probability-flow ODE, the moment recursion, the recursion itself.

@functools.cache
def _ode_end(name, segments):
  start = documented_noise(0)[0] / _alpha_sigma(segments[0][0])[0]
  y = start.ravel()
  for logsnr_start, logsnr_end, guided in segments:
    def velocity(log_sigma, flat, guided=guided):
      logsnr = -2.0 * log_sigma
      z = _alpha_sigma(logsnr)[0] * flat.reshape(PATHS, DIM)
      return (np.exp(log_sigma) * reference_prediction(name, z, logsnr, guided=guided)[1]).ravel()
    solution = solve_ivp(velocity, (-logsnr_start / 2, -logsnr_end / 2), y, method='DOP853',
                         rtol=1e-12, atol=1e-12)
    assert solution.success
    y = solution.y[:, -1]
  return y.reshape(PATHS, DIM)


def reference_ode_end(name, steps):
  """x̂ = ẑ(λ_max) of dẑ/d log σ_e = σ_e ε̂(α ẑ, λ) from the sampler's initial z, by solve_ivp.

  A step is guided when its first level is (`guided_level`, both Heun evaluations alike): the ODE is
  integrated on each run of equally guided steps, so its velocity is smooth within a segment.
  """
  grid = reference_grid(steps)
  flags = [guided_level(name, logsnr) for logsnr in grid[:-1]]
  starts = [0] + [t for t in range(1, steps) if flags[t] != flags[t - 1]]
  ends = starts[1:] + [steps]
  return _ode_end(name, tuple((grid[a], grid[b], flags[a]) for a, b in zip(starts, ends)))


def _affine(name, logsnr, guided):
  """(A, C, A_r, C_r): ε̃ = A z − C guided and the re-noising branch ε_r = A_r z − C_r."""
  variant = REFERENCES[name]
  alpha, sigma = _alpha_sigma(logsnr)
  w = variant.params['w'] * guided * (_cosine_ramp(logsnr) if variant.schedule == 'cosine' else 1.0)
  mean_u, std_u = ((MEAN_GUIDE, STD_GUIDE) if variant.method == 'autoguidance'
                   else (MEAN_UNCOND, STD_UNCOND))
  slope = lambda std: sigma / (alpha**2 * std**2 + sigma**2)
  a_c, a_u = slope(STD_COND), slope(std_u)
  c_c, c_u = a_c * alpha * MEAN_COND, a_u * alpha * mean_u
  a, c = (1 + w) * a_c - w * a_u, (1 + w) * c_c - w * c_u
  return (a, c, a_u, c_u) if variant.method == 'cfgpp' else (a, c, a, c)


def reference_moments(name, solver, *, steps, eta=0.0):
  """Exact per-dimension mean [DIM] and variance of x̂ when every ε is affine in z.

  x̃ = (z − σ ε̃)/α; ancestral z' = r (α'/α) z + (1 − r) α' x̃ + ((σ̃²)^{1−v} (σ²_{λ|λ'})^v)^{1/2} ξ,
  r = e^{λ−λ'}, returning the last level's x̃; DDIM z' = α' x̃ + (σ'² − η² σ̃²)^{1/2} ε_r + η σ̃ ξ,
  σ̃² = (1 − r) σ'², returning z_T/α_T. z_1 ~ N(0, I).
  """
  grid = reference_grid(steps)
  mean, var = np.zeros(DIM), 1.0
  for t, logsnr in enumerate(grid):
    alpha, sigma = _alpha_sigma(logsnr)
    if solver == 'ddim' and t == steps:
      return mean / alpha, var / alpha**2
    a, c, a_r, c_r = _affine(name, logsnr, guided_level(name, logsnr))
    x_slope, x_offset = (1 - sigma * a) / alpha, sigma * c / alpha
    if solver == 'ancestral' and t == steps:
      return x_slope * mean + x_offset, x_slope**2 * var
    alpha_next, sigma_next = _alpha_sigma(grid[t + 1])
    r = np.exp(logsnr - grid[t + 1])
    if solver == 'ancestral':
      z_slope, z_offset = r * alpha_next / alpha + (1 - r) * alpha_next * x_slope, (
          (1 - r) * alpha_next * x_offset)
      noise_var = ((1 - r) * sigma_next**2)**(1 - VARIANCE_INTERP) * (
          (1 - r) * sigma**2)**VARIANCE_INTERP
    else:
      noise_var = eta**2 * (1 - r) * sigma_next**2
      direction = np.sqrt(sigma_next**2 - noise_var)
      z_slope = alpha_next * x_slope + direction * a_r
      z_offset = alpha_next * x_offset - direction * c_r
    mean, var = z_slope * mean + z_offset, z_slope**2 * var + noise_var


def reference_sampler(name, solver, *, steps, eta=0.0):
  """x̂ [PATHS, DIM] of `solver` driven by `documented_noise`, every formula in float64.

  ancestral and DDIM as `reference_moments`; DPM-Solver++(2M) z' = (σ'/σ) z − α'(e^{−h} − 1) D,
  h = (λ' − λ)/2, D = (1 + 1/2r) x̃ − (1/2r) x̃₋ with r = h₋/h (D = x̃ first and last); Heun in
  ẑ = z/α: ẑ_E = ẑ + (σ_e' − σ_e) ε̂, ẑ' = ẑ + (σ_e' − σ_e)(ε̂ + ε̂(ẑ_E, λ'))/2, ẑ' = ẑ_E at the last
  step. A method state (APG's Δ) advances at every evaluation.
  """
  grid, noise = reference_grid(steps), documented_noise(steps)
  z, state, previous = noise[0], None, None
  for t, logsnr in enumerate(grid[:-1]):
    guided = guided_level(name, logsnr)
    x, eps, state = reference_prediction(name, z, logsnr, guided=guided, state=state)
    logsnr_next = grid[t + 1]
    (alpha, sigma), (alpha_next, sigma_next) = _alpha_sigma(logsnr), _alpha_sigma(logsnr_next)
    r = np.exp(logsnr - logsnr_next)
    if solver == 'ancestral':
      std = np.sqrt(((1 - r) * sigma_next**2)**(1 - VARIANCE_INTERP)
                    * ((1 - r) * sigma**2)**VARIANCE_INTERP)
      z = r * alpha_next / alpha * z + (1 - r) * alpha_next * x + std * noise[t + 1]
    elif solver == 'ddim':
      noise_std = eta * np.sqrt((1 - r) * sigma_next**2)
      z = alpha_next * x + np.sqrt(sigma_next**2 - noise_std**2) * eps + noise_std * noise[t + 1]
    elif solver == 'dpmpp_2m':
      h = 0.5 * (logsnr_next - logsnr)
      last = t == steps - 1
      half_inverse_r = 0.0 if previous is None or last else h / (2 * previous[1])
      d = x if previous is None or last else (1 + half_inverse_r) * x - half_inverse_r * previous[0]
      z = sigma_next / sigma * z - alpha_next * np.expm1(-h) * d
      previous = (x, h)
    else:
      step = sigma_next / alpha_next - sigma / alpha
      z_hat_euler = z / alpha + step * eps
      if t == steps - 1:
        z = alpha_next * z_hat_euler
        continue
      _, eps_euler, state = reference_prediction(name, alpha_next * z_hat_euler, logsnr_next,
                                                 guided=guided, state=state)
      z = alpha_next * (z / alpha + step * (eps + eps_euler) / 2)
  if solver == 'ancestral':
    return reference_prediction(name, z, grid[-1], guided=guided_level(name, grid[-1]),
                                state=state)[0]
  return z / _alpha_sigma(grid[-1])[0]


# ----------------------------------------------------------------------------------------------
# The matrix.

def _ode_order(solver, name):
  """DDIM 1, DPM-Solver++(2M) and Heun 2; an interval switches the velocity on and off, which the
  multistep's x̃₋ extrapolates across (one O(h) local error at each switch): DPM-Solver++ order 1."""
  return 1 if solver == 'ddim' or (solver, name) == ('dpmpp_2m', 'interval') else 2


@pytest.mark.parametrize('solver, name', ODE_PAIRS)
def test_ode_solvers_converge_to_the_guided_probability_flow_ode(solver, name):
  errors = np.array([np.abs(sampled()[solver, 0.0, steps, name]
                            - reference_ode_end(name, steps)).max() for steps in (STEPS, 2 * STEPS)])
  order = _ode_order(solver, name)
  measured = np.log2(errors[0] / errors[1])
  # Measured from 64 to 128 steps: 0.98–1.16 for order 1, 1.98–2.17 for order 2 (threshold's clip and
  # APG's cap bend the velocity, which stays continuous: still order 2).
  assert abs(measured - order) <= 0.25, (errors, measured)
  # At 128 steps, x̂ of size 1–3: measured ≤ 0.025 (order 1) and ≤ 0.0027 (order 2).
  bound = 0.03 if order == 1 else 0.004
  assert errors[1] < bound, errors
  # The method matters: the contrast's path (plain CFG) ends more than 2 bounds away.
  contrast = reference_ode_end(CONTRAST[name], 2 * STEPS)
  assert np.abs(reference_ode_end(name, 2 * STEPS) - contrast).max() > 2 * bound


@pytest.mark.parametrize('solver, eta, name', AFFINE_PAIRS)
def test_affine_pairs_match_the_exact_moment_recursion(solver, eta, name):
  x = sampled()[solver, eta, STEPS, name]
  mean, var = reference_moments(name, solver, steps=STEPS, eta=eta)
  # 4.5 standard errors: the mean of COUNT draws per dimension, the variance averaged over DIM
  # independent dimensions (standard error var · (2 / (COUNT · DIM))^{1/2}).
  np.testing.assert_allclose(x.mean(0), mean, atol=4.5 * np.sqrt(var / COUNT), rtol=0)
  np.testing.assert_allclose(x.var(0).mean(), var, rtol=4.5 * np.sqrt(2 / (COUNT * DIM)))
  # The method matters: the contrast's moments lie far outside those bounds.
  other_mean, other_var = reference_moments(CONTRAST[name], solver, steps=STEPS, eta=eta)
  assert (np.abs(other_mean - mean).max() > 20 * np.sqrt(var / COUNT)
          or abs(other_var / var - 1) > 20 * np.sqrt(2 / (COUNT * DIM))), (other_mean, other_var)


@pytest.mark.parametrize('solver, eta, name', NONLINEAR_PAIRS)
def test_nonlinear_pairs_match_the_float64_sampler_recursion(solver, eta, name):
  x = sampled()[solver, eta, STEPS, name]
  reference = reference_sampler(name, solver, steps=STEPS, eta=eta)
  # The same recursion: float32 rounding alone, measured ≤ 1.5e-6 over the 64 steps.
  np.testing.assert_allclose(x, reference, rtol=1e-5, atol=1e-5)
  contrast = reference_sampler(CONTRAST[name], solver, steps=STEPS, eta=eta)
  assert np.abs(contrast - reference).max() > 1000 * 1e-5


@pytest.mark.parametrize('solver, method', UNDEFINED)
def test_undefined_pairs_raise_the_project_errors(solver, method):
  with pytest.raises(ValueError, match=r'CFG\+\+ \(guidance.method=cfgpp\) needs a solver that '
                                       r're-noises with ε \(sampling.sampler=ddim\)'):
    samplers.sample(DENOISE, key=KEY, labels=jnp.zeros(2, jnp.int32), image_shape=IMAGE_SHAPE,
                    num_steps=4, null_label=1, params=samplers.GuidanceParams(w=-0.5), method=method,
                    solver=solver)
  config = smoke.get_config()
  config.sampling.sampler, config.guidance.method, config.guidance.weights = solver, method, (-0.5,)
  with pytest.raises(ConfigError, match=f'cfgpp .* use sampling.sampler=ddim, not {solver!r}'):
    check_config(config)


def test_the_matrix_covers_every_sampler_and_method():
  # Every (solver, method) of the registries is compared with a reference above or raises; DDIM with
  # η = 0 and with η > 0 each meet every method.
  covered = ({(s, 0.0, VARIANTS[n].method) for s, n in ODE_PAIRS}
             | {(s, eta, VARIANTS[n].method) for s, eta, n in AFFINE_PAIRS + NONLINEAR_PAIRS})
  runs = {('ancestral', 0.0), ('ddim', 0.0), ('ddim', ETA), ('dpmpp_2m', 0.0), ('heun', 0.0)}
  expected = {(s, eta, m) for s, eta in runs for m in guidance.METHODS
              if (s, m) not in UNDEFINED}
  assert covered == expected
  assert {s for s, _ in runs} == set(solvers.SOLVERS)
  assert {m for _, m in UNDEFINED} <= set(guidance.METHODS)
  assert 'apg_momentum' in {n for _, _, n in NONLINEAR_PAIRS}
