"""Guided sampling: any guidance method (`cfg/guidance.py`) × any solver (`cfg/solvers.py`), one `lax.scan`.

The loop walks an increasing log-SNR grid λ_1 = λ_min < … < λ_T = λ_max (`sampling.grid`:
Algorithm 2's uniform u by default). At every level the solver asks `predict` for a prediction;
`predict` either evaluates both branches (ε_c and ε_u from ONE call of batch 2B, or the main and the
guide network for autoguidance) and lets the method combine them, or — at a level where the method
does not guide — evaluates the conditional model alone. For methods that skip (the guidance
interval), that choice is a per-level boolean in the scan's inputs, and `lax.cond` on it means the
unconditional call is really not executed there. The flag does not depend on any vmapped value
(unless the interval bounds themselves are swept), so a `vmap` over w keeps the `cond`.

Guidance uses the paper's weight w (w = 0: conditional model; the "scale" of later work is
s = 1 + w). `GuidanceParams` (w scalar or [B]; the others scalars) are traced data, so changing any of
them never recompiles; `num_steps`, `image_shape`, `null_label`, `method`, `solver`, `grid`, `guide`
and `clip_x` are static. The loop is one scan, so compile time does not grow with T.

Noise: example i draws from k_i = fold_in(key, example_ids[i]) (initial z from
fold_in(k_i, 0), step t's noise from fold_in(k_i, t + 1)). `example_ids` are global example
indices, so a sample does not depend on how its batch was split across calls or devices.

Network evaluations per image (`count_evaluations`): ancestral T, DDIM and DPM-Solver++ T − 1,
Heun 2(T − 1) − 1 (its last step is Euler's), each doubled at guided levels (a guided 2B call counts 2,
a skipped one 1).

Jitting: keep the network parameters an argument so they are not baked into the program, e.g.

  @jax.jit
  def run(params, key, labels, guidance_weight):
    return sample(functools.partial(model.apply, params), key=key, labels=labels,
                  params=GuidanceParams(w=guidance_weight), image_shape=(28, 28, 1),
                  num_steps=256, null_label=num_classes, solver='ancestral')
"""

import functools
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from cfg import diffusion, guidance, solvers
from cfg.guidance import Branches, Denoiser, GuidanceParams, Method, Pred, State
from cfg.solvers import Carry, Level, Solver, SolverParams

Array = jax.Array
Predict = Callable[[Array, ArrayLike, State, Any], tuple[Pred, State]]


def _validate(*, labels: ArrayLike, image_shape: Any, num_steps: Any, params: GuidanceParams,
              example_ids: Optional[ArrayLike], logsnr_min: ArrayLike, logsnr_max: ArrayLike,
              solver_params: SolverParams) -> None:
  """Raises ValueError naming the bad argument; shapes only, so it also runs under jit."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
    raise ValueError(f'num_steps must be a Python int (it is static), got {num_steps!r}.')
  if int(num_steps) < 2:
    raise ValueError(f'num_steps must be >= 2 (grid levels from λ_min to λ_max), got {num_steps}.')
  if (not isinstance(image_shape, (tuple, list)) or not image_shape
      or not all(isinstance(d, numbers.Integral) and int(d) > 0 for d in image_shape)):
    raise ValueError(f'image_shape must be a tuple of positive ints like (28, 28, 1), '
                     f'got {image_shape!r}.')
  if jnp.ndim(labels) != 1:
    raise ValueError(f'labels must have shape [B], got shape {jnp.shape(labels)}.')
  batch = jnp.shape(labels)[0]
  if jnp.shape(params.w) not in ((), (batch,)):
    raise ValueError(f'guidance_weight must be a scalar or have shape [B] = ({batch},), got '
                     f'shape {jnp.shape(params.w)}; sweep weights with sample_sweep.')
  for name, leaf in zip(GuidanceParams._fields[1:], params[1:]):
    if jnp.shape(leaf) != ():
      raise ValueError(f'guidance parameter {name} must be a scalar (one value per level for the '
                       f'whole batch), got shape {jnp.shape(leaf)}; sweep it with sample_sweep.')
  if example_ids is not None and jnp.shape(example_ids) != (batch,):
    raise ValueError(f'example_ids must have the shape of labels ({batch},), got shape '
                     f'{jnp.shape(example_ids)}.')
  if (isinstance(logsnr_min, numbers.Real) and isinstance(logsnr_max, numbers.Real)
      and not logsnr_min < logsnr_max):
    raise ValueError(f'logsnr_min must be < logsnr_max, got {logsnr_min} and {logsnr_max}.')
  v, eta, _ = solver_params
  if isinstance(v, numbers.Real) and not 0.0 <= v <= 1.0:
    raise ValueError(f'variance_interp must lie in [0, 1], got {v}.')
  if isinstance(eta, numbers.Real) and not 0.0 <= eta <= 1.0:
    raise ValueError(f'eta (DDIM) must lie in [0, 1], got {eta}.')


def _check_combination(method: Method, solver: Solver, *, guide: bool, has_guide_network: bool) -> None:
  if method.renoise_ref and not solver.renoises_with_eps:
    raise ValueError('CFG++ (guidance.method=cfgpp) needs a solver that re-noises with ε '
                     '(sampling.sampler=ddim); ancestral, dpmpp_2m and heun step with x̂ or a second '
                     'evaluation, where CFG++ is not defined.')
  if method is guidance.METHODS['autoguidance'] and guide and not has_guide_network:
    raise ValueError('autoguidance needs a guide network (guide_denoise; guidance.guide_workdir).')


def chunk_count(rows: int, *, max_batch: Optional[int], devices: int = 1, lanes: int = 1) -> int:
  """The fewest sequential calls k for a network call of `rows` rows (over `devices`, under a vmap of
  `lanes`) to see at most `max_batch` rows per device each: k divides rows / devices and
  lanes · rows / (devices · k) ≤ max_batch, or k = rows / devices (one row per device and lane) if no
  split gets there. max_batch None, or rows that do not divide over the devices: 1."""
  if max_batch is None or rows % devices:
    return 1
  local = rows // devices
  return next((k for k in range(1, local + 1) if local % k == 0 and lanes * (local // k) <= max_batch), local)


def in_chunks(denoise: Denoiser, *, max_batch: Optional[int], devices: int = 1, lanes: int = 1) -> Denoiser:
  """`denoise` run as a `lax.map` over k = chunk_count(B, …) sequential calls of B / k rows each, so no call
  sees more than `max_batch` rows per device (`lanes`: the K weights of a `sample_sweep` vmap, which each
  call carries too). Call j takes rows j, j + k, …, which keeps a batch sharded over devices evenly
  spread. The same ε row for row, with 1/k of the activations live at a time: on a CPU calls of 32 to 64
  rows run faster than one call of hundreds (cache), and on an accelerator it bounds memory.
  max_batch None: `denoise` itself."""
  if max_batch is None:
    return denoise

  def call(z: Array, logsnr: Array, labels: Array) -> Array:
    k = chunk_count(z.shape[0], max_batch=max_batch, devices=devices, lanes=lanes)
    if k == 1:
      return denoise(z, logsnr, labels)
    split = lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    eps = jax.lax.map(lambda rows: denoise(*rows), (split(z), split(logsnr), split(labels)))
    return eps.swapaxes(0, 1).reshape(z.shape[0], *eps.shape[2:])

  return call


def _example_keys(key: Array, example_ids: Array) -> Array:
  """k_i = fold_in(key, example_ids[i])."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)


def _example_noise(example_keys: Array, index: ArrayLike, image_shape: tuple) -> Array:
  """ε_i ~ N(0, I) from fold_in(k_i, index), one draw per example."""
  return jax.vmap(
      lambda k: jax.random.normal(jax.random.fold_in(k, index), image_shape))(example_keys)


def _levels(grid: Array, *, evaluates_last_level: bool) -> tuple[Array, Array]:
  """(λ_t, λ_{t+1}) per scan step. Walking all T levels, the last λ_{T+1} is a dummy above λ_max:
  the step after the last level is computed and discarded, which keeps the loop one scan with one
  network call site, and a dummy λ_{T+1} > λ_T keeps that discarded step finite."""
  if evaluates_last_level:
    return grid, jnp.append(grid[1:], grid[-1] + 1.0)
  return grid[:-1], grid[1:]


def guidance_plan(logsnrs: Any, *, logsnr_lo: Any, logsnr_hi: Any) -> Any:
  """guided[t] = λ_lo ≤ λ_t ≤ λ_hi (`guidance.inside_interval`): the levels whose guiding branch runs."""
  return guidance.inside_interval(logsnrs, logsnr_lo=logsnr_lo, logsnr_hi=logsnr_hi)


def _clip_x(*, pred: Pred, z: Array, logsnr: ArrayLike) -> Pred:
  """x̃ ← clip(x̃, −1, 1), ε̂ = (z − α x̃)/σ recomputed."""
  x = jnp.clip(pred.x, -1.0, 1.0)
  return Pred(eps=diffusion.eps_from_x(z=z, x=x, logsnr=logsnr), x=x)


def _predictor(denoise: Denoiser, pair: Callable[[Array, Array, Array], tuple[Array, Array]], method: Method, *,
               labels: Array, params: GuidanceParams, clip_x: bool, guide: bool) -> Predict:
  """predict(z, λ, state, guided) -> (Pred, state); `guided` None means "guide" at every level."""

  def finish(pred: Pred, z: Array, logsnr: Array) -> Pred:
    return _clip_x(pred=pred, z=z, logsnr=logsnr) if clip_x else pred

  def main_only(z: Array, logsnr: Array, state: State) -> tuple[Pred, State]:
    eps = denoise(z, logsnr, labels).astype(z.dtype)
    return finish(guidance.as_pred(z=z, eps=eps, logsnr=logsnr), z, logsnr), state

  def with_ref(z: Array, logsnr: Array, state: State) -> tuple[Pred, State]:
    eps_main, eps_ref = pair(z, logsnr, labels)
    branches = Branches(guidance.as_pred(z=z, eps=eps_main, logsnr=logsnr),
                        guidance.as_pred(z=z, eps=eps_ref, logsnr=logsnr))
    w = method.weight(params=params, logsnr=logsnr)
    pred, state = method.combine(branches=branches, state=state, w=w, params=params, z=z,
                                 logsnr=logsnr)
    for post in method.post:
      pred = post(pred=pred, branches=branches, params=params, z=z, logsnr=logsnr)
    pred = Pred(eps=pred.eps.astype(z.dtype), x=pred.x.astype(z.dtype))
    return finish(pred, z, logsnr), state

  def predict(z: Array, logsnr: ArrayLike, state: State, guided: Any) -> tuple[Pred, State]:
    logsnr = jnp.full(labels.shape, logsnr, dtype=z.dtype)
    if not guide:
      return main_only(z, logsnr, state)
    if guided is None:
      return with_ref(z, logsnr, state)
    # XLA Conditional: at an unguided level the guiding branch is not executed.
    return jax.lax.cond(guided, with_ref, main_only, z, logsnr, state)

  return predict


def sample(denoise: Denoiser, *, key: Array, labels: ArrayLike, image_shape: Sequence[int], num_steps: int,
           null_label: int, params: Optional[GuidanceParams] = None,
           guidance_weight: Optional[ArrayLike] = None, method: Union[str, Method] = 'cfg',
           solver: Union[str, Solver] = 'ancestral', grid: Union[str, Callable[..., Array]] = 'uniform_u',
           solver_params: Sequence[ArrayLike] = SolverParams(), guide_denoise: Optional[Denoiser] = None,
           clip_x: bool = False, guide: bool = True, logsnr_min: float = diffusion.LOGSNR_MIN,
           logsnr_max: float = diffusion.LOGSNR_MAX, example_ids: Optional[ArrayLike] = None) -> Array:
  """x̂ [B, *image_shape] from z ~ N(0, I) at λ_min: one guided prediction (or two, Heun) per level.

  denoise: ε(z [B, *image_shape], λ [B], labels [B]) -> ε; called with batch 2B ([c; ∅]) at guided
    levels, else with batch B and the labels alone. guide_denoise: the guide network of autoguidance
    (then both networks are called with batch B, the same z, λ and labels).
  params: GuidanceParams (or `guidance_weight`, w alone), traced. method / solver / grid: names in
    guidance.METHODS / solvers.SOLVERS / solvers.GRIDS, or Method / Solver objects.
  solver_params: SolverParams(variance_interp v, eta η, guide_state_per_step); Python numbers are static,
    arrays traced.
  num_steps: static T >= 2 grid levels. null_label: static index of ∅. clip_x: static, clip x̃ to
  [−1, 1]. guide: static, False samples the conditional model alone. logsnr_min, logsnr_max: the grid
  ends. example_ids: int [B] global example indices (default arange(B)).
  """
  method = guidance.get_method(method) if isinstance(method, str) else method
  solver = solvers.get_solver(solver) if isinstance(solver, str) else solver
  grid_fn = solvers.get_grid(grid) if isinstance(grid, str) else grid
  if params is None:
    params = GuidanceParams(w=0.0 if guidance_weight is None else guidance_weight)
  elif guidance_weight is not None:
    raise ValueError('give either params or guidance_weight, not both.')
  solver_params = SolverParams(*solver_params)
  _validate(labels=labels, image_shape=image_shape, num_steps=num_steps, params=params,
            example_ids=example_ids, logsnr_min=logsnr_min, logsnr_max=logsnr_max,
            solver_params=solver_params)
  _check_combination(method, solver, guide=guide, has_guide_network=guide_denoise is not None)
  labels = jnp.asarray(labels, jnp.int32)
  if example_ids is None:
    example_ids = jnp.arange(labels.shape[0])
  example_keys = _example_keys(key, jnp.asarray(example_ids))
  image_shape = tuple(image_shape)
  params = guidance.as_float32(params)
  pair = (guidance.network_pair(denoise, guide_denoise) if guide_denoise is not None
          else guidance.cfg_pair(denoise, null_label=null_label))
  predict = _predictor(denoise, pair, method, labels=labels, params=params, clip_x=clip_x,
                       guide=guide)

  grid_values = grid_fn(num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  logsnrs, logsnrs_next = _levels(grid_values, evaluates_last_level=solver.evaluates_last_level)
  plan = (guidance_plan(logsnrs, logsnr_lo=params.logsnr_lo, logsnr_hi=params.logsnr_hi)
          if guide and method.skip_outside_interval else None)
  index = jnp.arange(logsnrs.shape[0])
  levels = Level(index, logsnrs, logsnrs_next, plan, index == logsnrs.shape[0] - 1)

  def body(carry: Carry, lv: Level) -> tuple[Carry, None]:
    draw_noise = lambda: _example_noise(example_keys, lv.index + 1, image_shape)
    return solver.level(predict, carry=carry, lv=lv, params=solver_params,
                        draw_noise=draw_noise), None

  z = _example_noise(example_keys, 0, image_shape)
  carry = Carry(z=z, x=jnp.zeros_like(z), solver=solver.init(z=z), guide=method.init(z=z))
  carry, _ = jax.lax.scan(body, carry, levels)
  if solver.evaluates_last_level:
    return carry.x
  alpha, _ = diffusion.alpha_sigma(grid_values[-1])
  x = carry.z / alpha
  return jnp.clip(x, -1.0, 1.0) if clip_x else x


def ancestral_sample(denoise: Denoiser, *, variance_interp: ArrayLike = 0.3, **kwargs: Any) -> Array:
  """x̂ = x̃_T of Algorithm 2: z_{t+1} ~ N(μ̃(z_t, x̃_t), (σ̃²)^{1−v} (σ²_{λ_t|λ_{t+1}})^v).

  `variance_interp` is v: 0 gives the posterior variance σ̃², 1 the forward σ²_{λ|λ'}
  (paper: 0.3 at 64×64, 0.2 at 128×128). Other arguments as `sample`.
  """
  return sample(denoise, solver='ancestral', solver_params=SolverParams(variance_interp=variance_interp),
                **kwargs)


def ddim_sample(denoise: Denoiser, *, eta: ArrayLike = 0.0, **kwargs: Any) -> Array:
  """DDIM: z_{t+1} = α_{t+1} x̃_t + (σ_{t+1}² − η² σ̃²)^{1/2} ε̂_t + η σ̃ ξ for T − 1 steps; x̂ = z_T/α_T.

  With `clip_x`, ε̂ = (z − α x̃)/σ is recomputed from the clipped x̃. Other arguments as `sample`.
  """
  return sample(denoise, solver='ddim', solver_params=SolverParams(eta=eta), **kwargs)


def get_sampler(name: str) -> Callable[..., Array]:
  """The sampler called `name`: ancestral_sample (takes v), ddim_sample (takes η), or `sample` with
  solver 'dpmpp_2m' | 'heun' bound."""
  solvers.get_solver(name)
  named = {'ancestral': ancestral_sample, 'ddim': ddim_sample}
  return named.get(name, functools.partial(sample, solver=name))


def sample_sweep(sampler_fn: Callable[..., Array], *, guidance_weights: Optional[ArrayLike] = None,
                 params: Optional[GuidanceParams] = None, **kwargs: Any) -> Array:
  """x̂[k] = sampler_fn(params=params_k, **kwargs) for all k in one vmapped program → [K, B, …].

  `params` is a GuidanceParams whose swept leaves have a leading axis K (a per-example w: [K, B])
  and whose scalar leaves are shared by every k (so a shared interval keeps its skipped calls);
  `guidance_weights` [K] is the short form for a sweep over w alone. Every k sees the same key,
  labels and noise, so the rows differ by guidance alone. `sampler_fn` is a sampler with `denoise`
  (and any static arguments) bound, e.g. functools.partial(sample, denoise, solver='ddim').
  """
  if 'guidance_weight' in kwargs:
    raise ValueError('sample_sweep takes guidance_weights [K] or params, not guidance_weight.')
  if guidance_weights is not None:
    if params is not None:
      raise ValueError('give sample_sweep either guidance_weights or params, not both.')
    if jnp.ndim(guidance_weights) != 1:
      raise ValueError(f'guidance_weights must have shape [K], got shape '
                       f'{jnp.shape(guidance_weights)}.')
    params = GuidanceParams(w=guidance_weights)
  if params is None:
    raise ValueError('sample_sweep needs guidance_weights [K] or params with [K] leaves.')
  params = guidance.as_float32(params)
  axes = GuidanceParams(*(0 if jnp.ndim(leaf) else None for leaf in params))  # type: ignore[arg-type]  # in_axes
  sizes = {jnp.shape(leaf)[0] for leaf, axis in zip(params, axes) if axis == 0}
  if len(sizes) != 1:
    raise ValueError(f'sample_sweep needs at least one swept leaf and one K for all of them; got '
                     f'leading sizes {sorted(sizes)}.')
  return jax.vmap(lambda p: sampler_fn(params=p, **kwargs), in_axes=(axes,))(params)


def num_steps_for_nfe(solver: Union[str, Solver], nfe: int) -> int:
  """The most grid levels T whose unguided evaluations per image fit in `nfe` (ancestral T = nfe;
  ddim and dpmpp_2m T = nfe + 1; heun, two evaluations a step and one at the last, 2T − 3 ≤ nfe)."""
  solver = solvers.get_solver(solver) if isinstance(solver, str) else solver
  steps = (nfe + solver.evals - solver.last_evals) // solver.evals
  return steps if solver.evaluates_last_level else steps + 1


class Evaluations(NamedTuple):
  """Network evaluations per image: `main` (conditional or main network) and `ref` (∅ or guide)."""
  main: int
  ref: int

  @property
  def total(self) -> int:
    return self.main + self.ref


def count_evaluations(*, solver: Union[str, Solver], method: Union[str, Method] = 'cfg', num_steps: int,
                      grid: Union[str, Callable[..., Array]] = 'uniform_u', guide: bool = True,
                      params: GuidanceParams = GuidanceParams(), logsnr_min: float = diffusion.LOGSNR_MIN,
                      logsnr_max: float = diffusion.LOGSNR_MAX) -> Evaluations:
  """Exact network evaluations per image of one `sample` call (host ints; params concrete scalars).

  A guided 2B call counts 2 (main + ref), a skipped guiding branch 0, Heun's second evaluation 1
  (none at the last step).
  """
  method = guidance.get_method(method) if isinstance(method, str) else method
  solver = solvers.get_solver(solver) if isinstance(solver, str) else solver
  grid_fn = solvers.get_grid(grid) if isinstance(grid, str) else grid
  with jax.ensure_compile_time_eval():
    grid_values = np.asarray(grid_fn(num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max))
  logsnrs = grid_values if solver.evaluates_last_level else grid_values[:-1]
  if not guide:
    plan = np.zeros(len(logsnrs), bool)
  elif method.skip_outside_interval:
    plan = np.asarray(guidance_plan(logsnrs, logsnr_lo=np.float32(np.asarray(params.logsnr_lo)),
                                    logsnr_hi=np.float32(np.asarray(params.logsnr_hi))))
  else:
    plan = np.ones(len(logsnrs), bool)
  saved = solver.evals - solver.last_evals  # the last step's skipped evaluations (Heun: 1)
  return Evaluations(main=solver.evals * len(logsnrs) - saved,
                     ref=solver.evals * int(np.sum(plan)) - saved * int(plan[-1]))
