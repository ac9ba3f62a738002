"""Solvers (one step of the reverse process each) and the log-SNR grids they walk.

A solver is a pure `level(predict, *, carry, lv, params, draw_noise) -> Carry`: it calls
`predict(z, λ, guide_state, guided) -> (Pred, guide_state)` once (ancestral, DDIM, DPM-Solver++) or
twice (Heun), so a level is a solver step, not a network evaluation. `Carry.solver` holds the
solver's own history (DPM-Solver++(2M)'s previous x̂ and h), `Carry.guide` the guidance method's.

Notation (paper §1): α² = sigmoid(λ), σ² = sigmoid(−λ), σ_e = σ/α = e^{−λ/2} (EDM's σ), a level
steps from λ to λ' > λ, σ̃² = (1 − e^{λ−λ'}) σ'² is the posterior variance.

Where the walk ends: ancestral sampling (Algorithm 2) evaluates every one of the T grid levels and
returns the last level's x̃. The ODE solvers (ddim, dpmpp_2m, heun) take T − 1 steps from λ_1 to
λ_T = λ_max and return x̂ = z_T/α_T with no network call there: at λ_max = 20, σ_T/α_T = 4.5e−5, so
an evaluation would only return z/α again (Algorithm 2's last level is that wasted call). That last
step is EDM's step to σ = 0, and it is first order: Heun takes its Euler step alone (EDM: "except at
the last step"; a correction would evaluate the network at σ_e = 4.5e−5, where training draws almost
no λ) and DPM-Solver++(2M) its DDIM step (diffusers' lower_order_final, final_sigmas_type='zero').
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from cfg import diffusion
from cfg.guidance import Pred

Array = jax.Array
# predict(z, λ, guide_state, guided) -> (Pred, guide_state): one prediction at a level (cfg/samplers.py).
Predict = Callable[[Array, Array, Any, Any], tuple[Pred, Any]]

EDM_RHO = 7.0
EDM_SIGMA_MAX = 80.0  # EDM's σ_max: above it the ODE barely moves (λ < −8.76)


# ----------------------------------------------------------------------------------------------
# Grids: λ_1 = λ_min < … < λ_T = λ_max, shape [T].

def uniform_u_grid(num_steps: int, *, logsnr_min: ArrayLike, logsnr_max: ArrayLike) -> Array:
  """λ at uniformly spaced u through the truncated-cosine map (Algorithm 2's grid)."""
  return diffusion.sampling_grid(num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max)


def uniform_logsnr_grid(num_steps: int, *, logsnr_min: ArrayLike, logsnr_max: ArrayLike) -> Array:
  """λ_i = λ_min + (i/(T − 1)) (λ_max − λ_min)."""
  return jnp.linspace(logsnr_min, logsnr_max, num_steps)


def edm_grid(num_steps: int, *, logsnr_min: ArrayLike, logsnr_max: ArrayLike,
             rho: float = EDM_RHO, sigma_max: float = EDM_SIGMA_MAX) -> Array:
  """σ_i = (σ_1^{1/ρ} + i/(T − 1) (σ_T^{1/ρ} − σ_1^{1/ρ}))^ρ, ρ = 7 (EDM), λ_i = −2 log σ_i.

  σ_1 = min(σ_max, e^{−λ_min/2}) with EDM's σ_max = 80, σ_T = e^{−λ_max/2}: the grid ends at λ_max
  like the others but starts no noisier than EDM's. Spread over λ ∈ [−20, 20] (σ_1 = 22026), a
  T = 9 grid put 4 of its 8 steps above σ_e = 250, where the ODE barely moves, and Heun's steps below
  were too coarse (fd_fmnist 155 against DDIM's 32 at the same NFE on the Fashion-MNIST model).
  """
  first = jnp.minimum(sigma_max, jnp.exp(-0.5 * logsnr_min)) ** (1.0 / rho)
  last = jnp.exp(-0.5 * logsnr_max / rho)
  fraction = jnp.linspace(0.0, 1.0, num_steps)
  return -2.0 * rho * jnp.log(first + fraction * (last - first))


GRIDS = {'uniform_u': uniform_u_grid, 'uniform_logsnr': uniform_logsnr_grid, 'edm': edm_grid}


def get_grid(name: str) -> Callable[..., Array]:
  if name not in GRIDS:
    raise ValueError(f'Unknown sampling grid {name!r}; choose one of {sorted(GRIDS)}.')
  return GRIDS[name]


def edm_sigma_to_logsnr(sigma: ArrayLike) -> Array:
  """λ = −2 log σ_e: EDM's σ of this VP process (σ_e = σ/α)."""
  return -2.0 * jnp.log(sigma)


# ----------------------------------------------------------------------------------------------
# Scan inputs and carry.

class Level(NamedTuple):
  """One scan step: its index, λ, the λ' it steps to, whether the guiding branch runs (or None), and
  whether it is the walk's last step (the ODE solvers' step to λ_max, taken first order)."""
  index: jax.Array  # type: ignore[assignment]  # the field shadows tuple.index, as NamedTuple allows
  logsnr: jax.Array
  logsnr_next: jax.Array
  guided: Any = None
  last: Any = False


class Carry(NamedTuple):
  """z, the last level's x̂, the solver's state and the guidance method's state."""
  z: jax.Array
  x: jax.Array
  solver: Any
  guide: Any


class SolverParams(NamedTuple):
  """Traced solver knobs: v of Algorithm 2 (ancestral), η of DDIM, and whether Heun's guidance state
  advances once per step (True: both evaluations read the step's incoming state, the predictor's update
  is carried) instead of at each evaluation (False)."""
  variance_interp: ArrayLike = 0.3
  eta: ArrayLike = 0.0
  guide_state_per_step: ArrayLike = False


def _alpha_sigma_like(logsnr: ArrayLike, x: Array) -> tuple[Array, Array]:
  return diffusion.alpha_sigma(diffusion.broadcast_from_left(logsnr, x.shape))


# ----------------------------------------------------------------------------------------------
# Step formulas.

def ancestral_step(*, z: Array, x: Array, logsnr: Array, logsnr_next: Array, variance_interp: ArrayLike,
                   noise: Array) -> Array:
  """z' = μ̃(z, x̃) + ((σ̃²)^{1−v} (σ²_{λ|λ'})^v)^{1/2} ε   (paper Algorithm 2)."""
  mean, posterior_variance = diffusion.posterior(
      z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
  log_variance = ((1.0 - variance_interp) * jnp.log(posterior_variance) + variance_interp
                  * jnp.log(diffusion.transition_variance(logsnr=logsnr, logsnr_next=logsnr_next)))
  return mean + diffusion.broadcast_from_left(jnp.exp(0.5 * log_variance), z.shape) * noise


def ddim_step(*, x: Array, eps: Array, logsnr: Array, logsnr_next: Array, eta: ArrayLike,
              noise: Array) -> Array:
  """z' = α' x̃ + (σ'² − η² σ̃²)^{1/2} ε̂ + η σ̃ ξ,  σ̃² = (1 − e^{λ−λ'}) σ'²   (DDIM; η = 0 deterministic)."""
  alpha_next, _ = _alpha_sigma_like(logsnr_next, x)
  posterior_variance = -jnp.expm1(logsnr - logsnr_next) * jax.nn.sigmoid(-logsnr_next)
  noise_variance = eta**2 * posterior_variance
  direction = jnp.sqrt(jax.nn.sigmoid(-logsnr_next) - noise_variance)
  return (alpha_next * x + diffusion.broadcast_from_left(direction, x.shape) * eps
          + diffusion.broadcast_from_left(jnp.sqrt(noise_variance), x.shape) * noise)


def dpm_first_order_step(*, z: Array, x: Array, logsnr: Array, logsnr_next: Array) -> Array:
  """z' = (σ'/σ) z − α' (e^{−h} − 1) D, h = (λ' − λ)/2   (DPM-Solver++, data prediction D)."""
  _, sigma = _alpha_sigma_like(logsnr, z)
  alpha_next, sigma_next = _alpha_sigma_like(logsnr_next, z)
  h = 0.5 * (logsnr_next - logsnr)
  return sigma_next / sigma * z - alpha_next * jnp.expm1(-h) * x


# ----------------------------------------------------------------------------------------------
# Levels: `(predict, *, carry, lv, params, draw_noise) -> Carry`.

def ancestral_level(predict: Predict, *, carry: 'Carry', lv: 'Level', params: 'SolverParams',
                    draw_noise: Callable[[], Array]) -> 'Carry':
  """Algorithm 2: x̃ at λ, z' ~ N(μ̃(z, x̃), (σ̃²)^{1−v} (σ²_{λ|λ'})^v)."""
  pred, guide = predict(carry.z, lv.logsnr, carry.guide, lv.guided)
  z = ancestral_step(z=carry.z, x=pred.x, logsnr=lv.logsnr, logsnr_next=lv.logsnr_next,
                     variance_interp=params.variance_interp, noise=draw_noise())
  return Carry(z=z, x=pred.x, solver=carry.solver, guide=guide)


def ddim_level(predict: Predict, *, carry: 'Carry', lv: 'Level', params: 'SolverParams',
               draw_noise: Callable[[], Array]) -> 'Carry':
  """DDIM with η: z' = α' x̃ + (σ'² − η² σ̃²)^{1/2} ε̂ + η σ̃ ξ (ε̂ = Pred.eps, ε_u under CFG++)."""
  pred, guide = predict(carry.z, lv.logsnr, carry.guide, lv.guided)
  z = ddim_step(x=pred.x, eps=pred.eps, logsnr=lv.logsnr, logsnr_next=lv.logsnr_next,
                eta=params.eta, noise=draw_noise())
  return Carry(z=z, x=pred.x, solver=carry.solver, guide=guide)


def dpmpp_2m_level(predict: Predict, *, carry: 'Carry', lv: 'Level', params: 'SolverParams',
                   draw_noise: Callable[[], Array]) -> 'Carry':
  """DPM-Solver++(2M): D = (1 + 1/(2r)) x̂ − (1/(2r)) x̂₋, r = h₋/h (D = x̂ at the first and the last
  step); z' = (σ'/σ) z − α' (e^{−h} − 1) D, h = (λ' − λ)/2   (Lu et al. 2022)."""
  del params, draw_noise
  pred, guide = predict(carry.z, lv.logsnr, carry.guide, lv.guided)
  x_prev, h_prev = carry.solver
  h = 0.5 * (lv.logsnr_next - lv.logsnr)
  first = lv.index == 0
  half_inverse_r = 0.5 * h / jnp.where(first, h, h_prev)
  d = jnp.where(first | lv.last, pred.x, (1.0 + half_inverse_r) * pred.x - half_inverse_r * x_prev)
  z = dpm_first_order_step(z=carry.z, x=d, logsnr=lv.logsnr, logsnr_next=lv.logsnr_next)
  return Carry(z=z, x=pred.x, solver=(pred.x, h), guide=guide)


def heun_level(predict: Predict, *, carry: 'Carry', lv: 'Level', params: 'SolverParams',
               draw_noise: Callable[[], Array]) -> 'Carry':
  """EDM's Heun step of dẑ/dσ_e = ε̂ (ẑ = z/α): Euler ẑ_E = ẑ + (σ_e' − σ_e) ε̂ (= DDIM η = 0),
  then ẑ' = ẑ + (σ_e' − σ_e)(ε̂ + ε̂_E)/2, i.e. z' = z_E + α'(σ_e' − σ_e)(ε̂_E − ε̂)/2, except at the
  last step, which is the Euler step alone (one evaluation; an XLA Conditional skips the second).

  Both evaluations use the level's guidance decision (kynkaat/guidance-interval's semantics). A
  guidance state (APG's momentum) advances at each evaluation, or, with `params.guide_state_per_step`,
  once per step as in the first-order solvers: the second evaluation reads the state the step started
  from, and the first evaluation's update is carried on.
  """
  del draw_noise
  pred, guide = predict(carry.z, lv.logsnr, carry.guide, lv.guided)
  alpha, sigma = _alpha_sigma_like(lv.logsnr, carry.z)
  alpha_next, sigma_next = _alpha_sigma_like(lv.logsnr_next, carry.z)
  z_euler = alpha_next * pred.x + sigma_next * pred.eps
  per_step = params.guide_state_per_step
  choose = lambda a, b: jax.tree.map(lambda u, v: jnp.where(per_step, u, v), a, b)

  def corrected(guide: Any) -> tuple[Array, Array, Any]:
    pred_euler, guide_euler = predict(z_euler, lv.logsnr_next, choose(carry.guide, guide), lv.guided)
    z = z_euler + 0.5 * (sigma_next - alpha_next * sigma / alpha) * (pred_euler.eps - pred.eps)
    return z, pred_euler.x, choose(guide, guide_euler)

  z, x, guide = jax.lax.cond(lv.last, lambda guide: (z_euler, pred.x, guide), corrected, guide)
  return Carry(z=z, x=x, solver=carry.solver, guide=guide)


def no_state(*, z: Array) -> Any:
  del z
  return ()


def dpmpp_state(*, z: Array) -> Any:
  """(x̂₋, h₋) before the first step; unused there."""
  return jnp.zeros_like(z), jnp.zeros((), z.dtype)


@dataclasses.dataclass(frozen=True)
class Solver:
  """A solver: its level function and initial state, static and hashable.

  evals: network evaluations per level. evaluates_last_level: True walks all T levels and returns
  the last x̃ (Algorithm 2); False takes T − 1 steps and returns z_T/α_T. last_evals: network
  evaluations of the last step (Heun's Euler step alone: 1). renoises_with_eps: the step re-noises
  with Pred.eps, the direction CFG++ replaces by ε_u.
  """
  level: Callable
  init: Callable = no_state
  evals: int = 1
  last_evals: int = 1
  evaluates_last_level: bool = False
  renoises_with_eps: bool = False


SOLVERS = {
    'ancestral': Solver(ancestral_level, evaluates_last_level=True),
    'ddim': Solver(ddim_level, renoises_with_eps=True),
    'dpmpp_2m': Solver(dpmpp_2m_level, init=dpmpp_state),
    'heun': Solver(heun_level, evals=2, last_evals=1),
}


def get_solver(name: str) -> 'Solver':
  if name not in SOLVERS:
    raise ValueError(f'Unknown sampler {name!r}; choose one of {sorted(SOLVERS)}.')
  return SOLVERS[name]
