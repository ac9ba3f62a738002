"""The continuous-time variance-preserving process in log-SNR λ (paper §1).

Conventions: α_λ² = sigmoid(λ), σ_λ² = sigmoid(−λ), λ = log(α²/σ²). Larger λ is cleaner.
Every function is pure, takes keyword-only arrays and broadcasts per-example λ (shape [B])
against images (shape [B, ...]) from the left.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def broadcast_from_left(x: ArrayLike, shape: Sequence[int]) -> jax.Array:
  """Appends trailing unit axes to x so that it broadcasts against `shape` from the left."""
  x = jnp.asarray(x)
  return jnp.reshape(x, x.shape + (1,) * (len(shape) - x.ndim))


def alpha_sigma(logsnr: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """(α_λ, σ_λ) = (sqrt(sigmoid(λ)), sqrt(sigmoid(−λ)))."""
  logsnr = jnp.asarray(logsnr)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def _cosine_ab(logsnr_min: ArrayLike, logsnr_max: ArrayLike) -> tuple[jax.Array, jax.Array]:
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return a, b


def logsnr_from_u(u: ArrayLike, *, logsnr_min: ArrayLike = LOGSNR_MIN,
                  logsnr_max: ArrayLike = LOGSNR_MAX) -> jax.Array:
  """λ(u) = −2 log tan(a u + b), b = arctan(e^{−λ_max/2}), a = arctan(e^{−λ_min/2}) − b."""
  a, b = _cosine_ab(logsnr_min, logsnr_max)
  return -2.0 * jnp.log(jnp.tan(a * u + b))


def u_from_logsnr(logsnr: ArrayLike, *, logsnr_min: ArrayLike = LOGSNR_MIN,
                  logsnr_max: ArrayLike = LOGSNR_MAX) -> jax.Array:
  """u(λ) = (arctan(e^{−λ/2}) − b) / a, the inverse of `logsnr_from_u`."""
  a, b = _cosine_ab(logsnr_min, logsnr_max)
  return (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a


def sample_logsnr(key: jax.Array, shape: Sequence[int], *, logsnr_min: ArrayLike = LOGSNR_MIN,
                  logsnr_max: ArrayLike = LOGSNR_MAX) -> jax.Array:
  """λ = λ(u), u ~ U[0, 1]: the truncated-cosine training distribution (Algorithm 1)."""
  u = jax.random.uniform(key, shape)
  return logsnr_from_u(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)


def sampling_grid(num_steps: int, *, logsnr_min: ArrayLike = LOGSNR_MIN,
                  logsnr_max: ArrayLike = LOGSNR_MAX) -> jax.Array:
  """λ_1 = λ_min < … < λ_T = λ_max at uniformly spaced u (Algorithm 2's grid), shape [T]."""
  u = jnp.linspace(1.0, 0.0, num_steps)
  return logsnr_from_u(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)


def diffuse(*, x: jax.Array, eps: jax.Array, logsnr: ArrayLike) -> jax.Array:
  """z_λ = α_λ x + σ_λ ε."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, x.shape))
  return alpha * x + sigma * eps


def x_from_eps(*, z: jax.Array, eps: jax.Array, logsnr: ArrayLike) -> jax.Array:
  """x̂ = (z − σ_λ ε̂) / α_λ."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, z.shape))
  return (z - sigma * eps) / alpha


def eps_from_x(*, z: jax.Array, x: jax.Array, logsnr: ArrayLike) -> jax.Array:
  """ε̂ = (z − α_λ x̂) / σ_λ."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, z.shape))
  return (z - alpha * x) / sigma


def transition_variance(*, logsnr: jax.Array, logsnr_next: jax.Array) -> jax.Array:
  """σ²_{λ|λ'} = (1 − e^{λ−λ'}) σ_λ², the variance of q(z_λ | z_λ'), λ < λ'."""
  return -jnp.expm1(logsnr - logsnr_next) * jax.nn.sigmoid(-logsnr)


def posterior(*, z: jax.Array, x: jax.Array, logsnr: jax.Array,
              logsnr_next: jax.Array) -> tuple[jax.Array, jax.Array]:
  """q(z_λ' | z_λ, x) = N(μ̃, σ̃²), λ < λ':
  μ̃ = e^{λ−λ'} (α_λ'/α_λ) z + (1 − e^{λ−λ'}) α_λ' x,  σ̃² = (1 − e^{λ−λ'}) σ_λ'².

  Returns (μ̃, σ̃²); σ̃² has the shape of `logsnr`.
  """
  shape = z.shape
  ratio = jnp.exp(logsnr - logsnr_next)
  alpha, _ = alpha_sigma(logsnr)
  alpha_next, _ = alpha_sigma(logsnr_next)
  mean = (broadcast_from_left(ratio * alpha_next / alpha, shape) * z
          + broadcast_from_left(-jnp.expm1(logsnr - logsnr_next) * alpha_next, shape) * x)
  variance = -jnp.expm1(logsnr - logsnr_next) * jax.nn.sigmoid(-logsnr_next)
  return mean, variance
