"""Guidance methods: how the conditional and the guiding branch make one guided prediction.

Convention used throughout the code: the guidance *weight* w of the paper (Eq. 6),

    ε̃ = (1 + w) ε(z, c) − w ε(z, ∅),

so w = 0 is the plain conditional model and w = −1 the unconditional one. Most later work
(diffusers, EDM, guidance interval, autoguidance, APG) writes the *scale* s = 1 + w:
ε̃ = ε_u + s (ε_c − ε_u). `scale_from_weight` converts for display.

The null label ∅ is the extra class index `num_classes` (the model has num_classes + 1
label embeddings).

The seam (`cfg/samplers.py` drives it): at a guided level a `pair` gives both branches — (ε_c, ε_u)
from ONE network call of batch 2B for CFG, or the main and the guide network's ε for autoguidance —
as `Branches(main, ref)` of `Pred(eps, x)`. A `Method` combines them into one `Pred` (and carries an
optional state through the sampler's scan); `Pred.eps` is also the direction a solver re-noises with,
which is how CFG++ differs from CFG. Every continuous knob lives in `GuidanceParams`, a NamedTuple of
traced scalars (w may be [B]), so a sweep over any of them never recompiles and `vmap`s.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from cfg import diffusion
from cfg.diffusion import broadcast_from_left

Array = jax.Array
Denoiser = Callable[[Array, Array, Array], Array]  # ε̂(z [B, …], λ [B], labels [B])
State = Any  # a method's pytree carried through the sampler's scan


def scale_from_weight(guidance_weight: ArrayLike) -> ArrayLike:
  """s = 1 + w (the diffusers / EDM "guidance scale")."""
  return 1.0 + guidance_weight


def combine(*, eps_cond: Array, eps_uncond: Array, guidance_weight: ArrayLike) -> Array:
  """ε̃ = (1 + w) ε_c − w ε_u; w is a scalar or a per-example vector [B]."""
  w = broadcast_from_left(guidance_weight, eps_cond.shape).astype(eps_cond.dtype)
  return (1.0 + w) * eps_cond - w * eps_uncond


def conditional_and_unconditional_eps(denoise: Denoiser, z: Array, logsnr: ArrayLike, labels: Array, *,
                                      null_label: int) -> Tuple[Array, Array]:
  """(ε_c, ε_u) from ONE call of `denoise` on the concatenated batch [z; z] with labels [c; ∅]."""
  logsnr = jnp.broadcast_to(logsnr, labels.shape)
  eps = denoise(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
  eps_cond, eps_uncond = jnp.split(eps, 2)
  return eps_cond, eps_uncond


def guided_eps(denoise: Denoiser, z: Array, logsnr: ArrayLike, labels: Array, *, guidance_weight: ArrayLike,
               null_label: int) -> Array:
  """ε̃ = (1 + w) ε(z, c) − w ε(z, ∅), both branches from one batched network call of size 2B."""
  eps_cond, eps_uncond = conditional_and_unconditional_eps(
      denoise, z, logsnr, labels, null_label=null_label)
  return combine(eps_cond=eps_cond, eps_uncond=eps_uncond, guidance_weight=guidance_weight)


# ----------------------------------------------------------------------------------------------
# Types of the seam.

class Pred(NamedTuple):
  """One prediction at (z, λ): x̂ and the ε a solver steps (and re-noises) with."""
  eps: jax.Array
  x: jax.Array


class Branches(NamedTuple):
  """Both branches at a guided level: `main` = ε(z, c); `ref` = ε(z, ∅) or the guide network's ε(z, c)."""
  main: Pred
  ref: Pred


class GuidanceParams(NamedTuple):
  """Traced guidance knobs; each default is a no-op. Leaves are scalars (w may also be [B]).

  w: the weight (s = 1 + w). logsnr_lo, logsnr_hi: the guidance interval in λ (EDM's σ ∈ (σ_lo, σ_hi]
  is λ ∈ [−2 log σ_hi, −2 log σ_lo)). rescale: φ. percentile: p of dynamic thresholding. apg_eta,
  apg_norm_cap, apg_beta: APG's η, r, β. step_u: the step of the `step` schedule (guide for u ≤ step_u).
  """
  w: ArrayLike = 0.0
  logsnr_lo: ArrayLike = -math.inf
  logsnr_hi: ArrayLike = math.inf
  rescale: ArrayLike = 0.0
  percentile: ArrayLike = 99.5
  apg_eta: ArrayLike = 1.0
  apg_norm_cap: ArrayLike = math.inf
  apg_beta: ArrayLike = 0.0
  step_u: ArrayLike = 0.5


def as_float32(params: GuidanceParams) -> GuidanceParams:
  """`params` with every leaf a float32 array (the form the sampler traces)."""
  return GuidanceParams(*(jnp.asarray(leaf, jnp.float32) for leaf in params))


def as_pred(*, z: Array, eps: Array, logsnr: ArrayLike) -> Pred:
  """Pred(ε, x̂ = (z − σ ε)/α)."""
  return Pred(eps=eps, x=diffusion.x_from_eps(z=z, eps=eps, logsnr=logsnr))


def _pred_from_x(*, z: Array, x: Array, logsnr: ArrayLike) -> Pred:
  """Pred(ε̂ = (z − α x̂)/σ, x̂)."""
  return Pred(eps=diffusion.eps_from_x(z=z, x=x, logsnr=logsnr), x=x)


# ----------------------------------------------------------------------------------------------
# Where the branches come from: `pair(z, λ [B], labels [B]) -> (ε_main, ε_ref)`.

def cfg_pair(denoise: Denoiser, *, null_label: int) -> Callable[[Array, Array, Array], Tuple[Array, Array]]:
  """(ε(z, c), ε(z, ∅)) from one call of batch 2B (`conditional_and_unconditional_eps`)."""
  return functools.partial(conditional_and_unconditional_eps, denoise, null_label=null_label)


def network_pair(denoise: Denoiser,
                 guide_denoise: Denoiser) -> Callable[[Array, Array, Array], Tuple[Array, Array]]:
  """(ε_main(z, c), ε_guide(z, c)): two networks, two calls, the same z, λ and labels (autoguidance)."""
  return lambda z, logsnr, labels: (denoise(z, logsnr, labels), guide_denoise(z, logsnr, labels))


# ----------------------------------------------------------------------------------------------
# Weight functions w(λ): `(*, params, logsnr) -> w`.

def constant_weight(*, params: GuidanceParams, logsnr: ArrayLike) -> ArrayLike:
  """w(λ) = w."""
  del logsnr
  return params.w


def inside_interval(logsnr: Any, *, logsnr_lo: Any, logsnr_hi: Any) -> Any:
  """λ_lo ≤ λ ≤ λ_hi, a bound within 1e-4 (1 + |bound|) of λ counting it in (numpy or traced).

  The float32 grid's ends miss λ_min and λ_max by ~1e-3 (λ_1 = −20.0011), and an interval given as
  [λ_min, λ_max] means every level.
  """
  slack = lambda bound: 1e-4 * (1.0 + abs(bound))
  return (logsnr_lo - slack(logsnr_lo) <= logsnr) & (logsnr <= logsnr_hi + slack(logsnr_hi))


def interval_weight(*, params: GuidanceParams, logsnr: ArrayLike) -> Array:
  """w(λ) = w · 1[λ_lo ≤ λ ≤ λ_hi] (Kynkäänniemi et al. 2024; outside, the conditional model)."""
  inside = inside_interval(logsnr, logsnr_lo=params.logsnr_lo, logsnr_hi=params.logsnr_hi)
  return jnp.where(inside, params.w, jnp.zeros_like(params.w))


def _u(logsnr: ArrayLike) -> Array:
  """u(λ) on the default truncated-cosine range (u = 1 at λ_min, the noise end; 0 at λ_max)."""
  return diffusion.u_from_logsnr(logsnr)


def linear_weight(*, params: GuidanceParams, logsnr: ArrayLike) -> ArrayLike:
  """w(λ) = 2 w (1 − u(λ)): rises toward the clean end, mean w over u (Wang et al. 2024)."""
  return params.w * 2.0 * (1.0 - _u(logsnr))


def cosine_weight(*, params: GuidanceParams, logsnr: ArrayLike) -> ArrayLike:
  """w(λ) = w (1 + cos π u(λ)): rises toward the clean end, mean w over u (Wang et al. 2024)."""
  return params.w * (1.0 + jnp.cos(jnp.pi * _u(logsnr)))


def step_weight(*, params: GuidanceParams, logsnr: ArrayLike) -> Array:
  """w(λ) = w · 1[u(λ) ≤ step_u]: guided on the clean part of the trajectory only."""
  return jnp.where(_u(logsnr) <= params.step_u, params.w, jnp.zeros_like(params.w))


SCHEDULES = {'constant': constant_weight, 'linear': linear_weight, 'cosine': cosine_weight,
             'step': step_weight}


# ----------------------------------------------------------------------------------------------
# Combine functions: `(*, branches, state, w, params, z, logsnr) -> (Pred, state)`.

def _per_example_w(w: ArrayLike, like: Array) -> Array:
  return broadcast_from_left(w, like.shape).astype(like.dtype)


def _dot(a: Array, b: Array) -> Array:
  """⟨a, b⟩ per example, shaped to broadcast against a."""
  return broadcast_from_left(jnp.sum(a * b, axis=tuple(range(1, a.ndim))), a.shape)


def cfg(*, branches: Branches, state: State, w: ArrayLike, params: GuidanceParams, z: Array,
        logsnr: ArrayLike) -> Tuple[Pred, State]:
  """ε̃ = (1 + w) ε_c − w ε_u, x̃ = (z − σ ε̃)/α   (paper Eq. 6)."""
  del params
  eps = combine(eps_cond=branches.main.eps, eps_uncond=branches.ref.eps, guidance_weight=w)
  return as_pred(z=z, eps=eps.astype(z.dtype), logsnr=logsnr), state


def cfg_pp(*, branches: Branches, state: State, w: ArrayLike, params: GuidanceParams, z: Array,
           logsnr: ArrayLike) -> Tuple[Pred, State]:
  """x̃ = x̂((1 + w) ε_c − w ε_u), re-noised with ε_u: z' = α' x̃ + σ' ε_u   (Chung et al. 2024).

  CFG++'s λ ∈ [0, 1] is s = 1 + w, so w ∈ [−1, 0]; w = 0 is the conditional model's x̂.
  """
  guided, state = cfg(branches=branches, state=state, w=w, params=params, z=z, logsnr=logsnr)
  return Pred(eps=branches.ref.eps, x=guided.x), state


def cfg_zero_star(*, branches: Branches, state: State, w: ArrayLike, params: GuidanceParams, z: Array,
                  logsnr: ArrayLike) -> Tuple[Pred, State]:
  """s* = ⟨ε_c, ε_u⟩/‖ε_u‖² per example; ε̃ = (1 + w) ε_c − w s* ε_u   (Fan et al. 2025, in ε).

  The paper's zero-init (the first steps output zero velocity) is left out: for flow velocity it
  keeps z at the noise, for ε-prediction a zero ε would instead jump x̂ to z/α, not the same thing.
  """
  del params
  main, ref = branches.main.eps, branches.ref.eps
  scale = _dot(main, ref) / _dot(ref, ref)
  return as_pred(z=z, eps=(1.0 + _per_example_w(w, main)) * main
                 - _per_example_w(w, main) * scale * ref, logsnr=logsnr), state


def apg(*, branches: Branches, state: State, w: ArrayLike, params: GuidanceParams, z: Array,
        logsnr: ArrayLike) -> Tuple[Pred, State]:
  """Adaptive projected guidance in x̂ space (Sadat et al. 2024, order of diffusers):

  Δ = x_c − x_u + β Δ₋ (state Δ₋, zero at the start);  Δ_r = Δ · min(1, r/‖Δ‖);
  Δ∥ = ⟨Δ_r, x_c⟩/⟨x_c, x_c⟩ x_c,  Δ⊥ = Δ_r − Δ∥;  x̃ = x_c + w (Δ⊥ + η Δ∥).   η = 1, r = ∞, β = 0: CFG.
  """
  main = branches.main.x
  delta = main - branches.ref.x + params.apg_beta * state
  norm = jnp.sqrt(_dot(delta, delta))
  capped = delta * jnp.minimum(1.0, params.apg_norm_cap / norm)
  parallel = _dot(capped, main) / _dot(main, main) * main
  x = main + _per_example_w(w, main) * (capped - parallel + params.apg_eta * parallel)
  return _pred_from_x(z=z, x=x, logsnr=logsnr), delta


# ----------------------------------------------------------------------------------------------
# Post-processing of the guided prediction: `(*, pred, branches, params, z, logsnr) -> Pred`.

def _std(x: Array) -> Array:
  """Per-example standard deviation over the non-batch axes, shaped to broadcast against x."""
  return broadcast_from_left(jnp.std(x, axis=tuple(range(1, x.ndim))), x.shape)


def rescaled(*, pred: Pred, branches: Branches, params: GuidanceParams, z: Array, logsnr: ArrayLike) -> Pred:
  """ε̂ = φ ε̃ std(ε_c)/std(ε̃) + (1 − φ) ε̃, per-example std (Lin et al. 2023, applied to ε as diffusers)."""
  phi = params.rescale
  eps = phi * pred.eps * (_std(branches.main.eps) / _std(pred.eps)) + (1.0 - phi) * pred.eps
  return as_pred(z=z, eps=jnp.asarray(eps), logsnr=logsnr)


def dynamic_threshold(*, pred: Pred, branches: Branches, params: GuidanceParams, z: Array,
                      logsnr: ArrayLike) -> Pred:
  """s = max(1, P_p(|x̃|)) per example; x̃ ← clip(x̃, −s, s)/s; ε̂ = (z − α x̃)/σ   (Imagen)."""
  del branches
  flat = jnp.abs(pred.x).reshape(pred.x.shape[0], -1)
  scale = jnp.maximum(1.0, jnp.percentile(flat, params.percentile, axis=1))
  scale = broadcast_from_left(scale, pred.x.shape)
  return _pred_from_x(z=z, x=jnp.clip(pred.x, -scale, scale) / scale, logsnr=logsnr)


def no_state(*, z: Array) -> State:
  """No method state: an empty pytree in the scan carry."""
  del z
  return ()


def zero_state(*, z: Array) -> State:
  """A state shaped like z, zero at the start (APG's running Δ)."""
  return jnp.zeros_like(z)


@dataclasses.dataclass(frozen=True)
class Method:
  """A guidance method: static and hashable; its numbers live in GuidanceParams.

  combine: the two branches → guided Pred (and state). init: the state at the start of sampling.
  post: functions applied to the guided Pred in order. weight: w(λ). renoise_ref: the solver must
  step with Pred.eps (CFG++ puts ε_u there). skip_outside_interval: the guiding branch is not
  evaluated at levels outside [logsnr_lo, logsnr_hi] (there the conditional model alone is used).
  """
  combine: Callable = cfg
  init: Callable = no_state
  post: Tuple[Callable, ...] = ()
  weight: Callable = constant_weight
  renoise_ref: bool = False
  skip_outside_interval: bool = False


METHODS = {
    'cfg': Method(),
    # The per-level plan decides (samplers.guidance_plan); at a guided level w itself applies, so
    # Heun's two evaluations of one level are guided alike. interval_weight is the no-skip form.
    'interval': Method(skip_outside_interval=True),
    'schedule': Method(),  # the weight function comes from guidance.schedule (`get_method`)
    'rescale': Method(post=(rescaled,)),
    'threshold': Method(post=(dynamic_threshold,)),
    'apg': Method(combine=apg, init=zero_state),
    'cfgpp': Method(combine=cfg_pp, renoise_ref=True),
    'cfg_zero_star': Method(combine=cfg_zero_star),
    'autoguidance': Method(),  # CFG's lerp against a guide network: D = D_0 + s (D_1 − D_0)
}


def get_method(name: str, *, schedule: str = 'constant') -> 'Method':
  """The Method called `name`; `schedule` names w(λ) for the 'schedule' method."""
  if name not in METHODS:
    raise ValueError(f'Unknown guidance method {name!r}; choose one of {sorted(METHODS)}.')
  if schedule not in SCHEDULES:
    raise ValueError(f'Unknown guidance schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.')
  if name == 'schedule':
    return dataclasses.replace(METHODS[name], weight=SCHEDULES[schedule])
  return METHODS[name]
