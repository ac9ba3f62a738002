"""Tests of cfg/diffusion.py against the paper's formulas recomputed in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from cfg import diffusion

LOGSNRS = np.array([-20.0, -7.5, -1.0, 0.0, 0.3, 4.0, 12.0, 20.0])


def _alpha2(logsnr):
  return 1.0 / (1.0 + np.exp(-logsnr))


def test_alpha_squared_plus_sigma_squared_is_one():
  alpha, sigma = diffusion.alpha_sigma(jnp.asarray(LOGSNRS))
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(alpha**2, _alpha2(LOGSNRS), rtol=1e-5)
  # λ = log(α²/σ²) where both are representable in float32.
  middle = np.abs(LOGSNRS) < 10
  np.testing.assert_allclose(np.log(alpha**2 / sigma**2)[middle], LOGSNRS[middle], atol=1e-4)


def test_logsnr_from_u_endpoints_and_midpoint():
  # float32 tan(a u + b) next to π/2 (u = 1, λ = −20) is good to a few 1e-3 in λ.
  logsnr = diffusion.logsnr_from_u(jnp.array([0.0, 0.5, 1.0]))
  np.testing.assert_allclose(logsnr, [20.0, 0.0, -20.0], atol=5e-3)
  logsnr = diffusion.logsnr_from_u(jnp.array([0.0, 1.0]), logsnr_min=-5.0, logsnr_max=8.0)
  np.testing.assert_allclose(logsnr, [8.0, -5.0], atol=1e-4)


def test_logsnr_from_u_is_decreasing_and_inverted_by_u_from_logsnr():
  u = jnp.linspace(0.0, 1.0, 101)
  logsnr = diffusion.logsnr_from_u(u)
  assert np.all(np.diff(np.asarray(logsnr)) < 0)
  np.testing.assert_allclose(diffusion.u_from_logsnr(logsnr), u, atol=2e-5)
  np.testing.assert_allclose(
      diffusion.logsnr_from_u(diffusion.u_from_logsnr(jnp.asarray(LOGSNRS))), LOGSNRS,
      atol=2e-3)


def test_sampling_grid_is_increasing_from_min_to_max_at_uniform_u():
  grid = np.asarray(diffusion.sampling_grid(9))
  assert grid.shape == (9,)
  assert np.all(np.diff(grid) > 0)
  np.testing.assert_allclose(grid[[0, 4, -1]], [-20.0, 0.0, 20.0], atol=5e-3)
  # Uniform u through the paper's map, in float64.
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  u = np.linspace(1.0, 0.0, 9)
  np.testing.assert_allclose(grid, -2.0 * np.log(np.tan(a * u + b)), atol=5e-3)


def test_sample_logsnr_is_within_bounds_and_follows_the_truncated_cosine():
  logsnr = np.asarray(diffusion.sample_logsnr(jax.random.key(0), (20000,),
                                               logsnr_min=-12.0, logsnr_max=15.0),
                      np.float64)
  assert logsnr.min() >= -12.0 - 1e-3 and logsnr.max() <= 15.0 + 1e-3
  # P(λ ≤ l) = P(u ≥ u(l)) = 1 − (arctan(e^{−l/2}) − b)/a, from the paper's map in float64.
  b = np.arctan(np.exp(-7.5))
  a = np.arctan(np.exp(6.0)) - b
  cdf = lambda l: 1.0 - (np.arctan(np.exp(-0.5 * l)) - b) / a
  result = scipy.stats.kstest(logsnr, cdf)
  assert result.pvalue > 1e-3, result
  # A plainly different law (uniform λ) must be rejected with the same sample.
  assert scipy.stats.kstest(logsnr, scipy.stats.uniform(-12.0, 27.0).cdf).pvalue < 1e-6


def test_diffuse_and_x_from_eps_round_trip():
  kx, ke = jax.random.split(jax.random.key(1))
  x = jax.random.uniform(kx, (8, 4, 4, 3), minval=-1, maxval=1)
  eps = jax.random.normal(ke, x.shape)
  logsnr = jnp.linspace(-6.0, 6.0, 8)
  z = diffusion.diffuse(x=x, eps=eps, logsnr=logsnr)
  alpha2 = _alpha2(np.asarray(logsnr, np.float64))[:, None, None, None]
  np.testing.assert_allclose(
      z, np.sqrt(alpha2) * x + np.sqrt(1 - alpha2) * eps, atol=1e-5)
  np.testing.assert_allclose(diffusion.x_from_eps(z=z, eps=eps, logsnr=logsnr), x, atol=1e-3)
  np.testing.assert_allclose(diffusion.eps_from_x(z=z, x=x, logsnr=logsnr), eps, atol=1e-3)


def _markov_joint(logsnr, logsnr_next):
  """Cov of (z_λ, z_λ') given x for the VP process built as a Markov chain from λ' down to λ.

  z_λ' = α' x + σ' ε',  z_λ = (α/α') z_λ' + ξ with Var ξ = σ² − (α/α')² σ'² (so Var z_λ = σ²).
  Returns (cov 2x2, Var ξ).
  """
  alpha2, alpha2_next = _alpha2(logsnr), _alpha2(logsnr_next)
  ratio = np.sqrt(alpha2 / alpha2_next)
  var_xi = (1 - alpha2) - ratio**2 * (1 - alpha2_next)
  cov = np.array([[1 - alpha2, ratio * (1 - alpha2_next)],
                  [ratio * (1 - alpha2_next), 1 - alpha2_next]])
  return cov, var_xi


@pytest.mark.parametrize('logsnr,logsnr_next', [(-8.0, -6.5), (-1.0, 0.5), (0.0, 3.0),
                                                (2.0, 2.2), (5.0, 11.0), (-15.0, 15.0)])
def test_posterior_equals_gaussian_conditioning(logsnr, logsnr_next):
  cov, _ = _markov_joint(logsnr, logsnr_next)
  alpha, alpha_next = np.sqrt(_alpha2(logsnr)), np.sqrt(_alpha2(logsnr_next))
  x = np.array([0.7, -0.3, 0.0])
  z = np.array([1.2, -0.4, 0.05])
  # Condition z_λ' on z_λ: mean α'x + C_{10} C_{00}^{-1} (z − αx), var C_11 − C_10 C_00^{-1} C_01.
  gain = np.linalg.solve(cov[:1, :1], cov[:1, 1:])[0, 0]
  mean_ref = alpha_next * x + gain * (z - alpha * x)
  var_ref = cov[1, 1] - gain * cov[0, 1]
  mean, var = diffusion.posterior(z=jnp.asarray(z, jnp.float32), x=jnp.asarray(x, jnp.float32),
                                  logsnr=jnp.float32(logsnr), logsnr_next=jnp.float32(logsnr_next))
  np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, var_ref, rtol=1e-4, atol=1e-9)


def test_posterior_broadcasts_per_example_logsnr():
  z = jnp.ones((2, 3, 3, 1))
  x = jnp.zeros((2, 3, 3, 1))
  mean, var = diffusion.posterior(z=z, x=x, logsnr=jnp.array([-1.0, 0.0]),
                                  logsnr_next=jnp.array([1.0, 4.0]))
  assert mean.shape == z.shape and var.shape == (2,)
  for i, (l, ln) in enumerate([(-1.0, 1.0), (0.0, 4.0)]):
    coef = np.exp(l - ln) * np.sqrt(_alpha2(ln) / _alpha2(l))
    np.testing.assert_allclose(mean[i], coef, rtol=1e-5)


@pytest.mark.parametrize('logsnr,logsnr_next', [(-8.0, -6.5), (0.0, 3.0), (5.0, 11.0),
                                                (19.0, 20.0)])
def test_transition_variance_equals_markov_noise_variance(logsnr, logsnr_next):
  _, var_xi = _markov_joint(logsnr, logsnr_next)
  var = diffusion.transition_variance(logsnr=jnp.float32(logsnr),
                                      logsnr_next=jnp.float32(logsnr_next))
  np.testing.assert_allclose(var, var_xi, rtol=1e-4)
