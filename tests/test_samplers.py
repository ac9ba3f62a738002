"""Tests of cfg/samplers.py with analytic denoisers of Gaussian class-conditional data.

Data of class c is x ~ N(μ_c, s_c² I), so z_λ | c ~ N(α μ_c, (α² s_c² + σ²) I) and the exact
conditional denoiser is ε(z, λ, c) = σ (z − α μ_c) / (α² s_c² + σ²). The unconditional model ∅
is either the class mixture (posterior class weights ∝ N(z; α μ_c, (α² s² + σ²) I)) or a
Gaussian of its own. References are float64 numpy from the paper's formulas: the data moments,
an exact moment recursion (with Gaussian c and ∅ every sampler step is linear-Gaussian), and
Gauss–Hermite quadrature of the 1-D DDIM map for a two-class mixture.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg import guidance, samplers

IMAGE_SHAPE = (4, 4, 1)
DIM = 16
SAMPLERS = ['ancestral', 'ddim']


def _alpha_sigma2(logsnr):
  return jax.nn.sigmoid(logsnr)[:, None], jax.nn.sigmoid(-logsnr)[:, None]


def gaussian_denoiser(means, stds):
  """Exact ε for label l ~ N(means[l], stds[l]² I); the null label is the last row."""
  means, stds = jnp.asarray(means, jnp.float32), jnp.asarray(stds, jnp.float32)

  def denoise(z, logsnr, labels):
    alpha2, sigma2 = _alpha_sigma2(logsnr)
    flat = z.reshape(z.shape[0], -1)
    variance = alpha2 * stds[labels][:, None]**2 + sigma2
    return (jnp.sqrt(sigma2) * (flat - jnp.sqrt(alpha2) * means[labels]) / variance
            ).reshape(z.shape)

  return denoise


def mixture_denoiser(means, std):
  """Exact ε for classes N(means[c], std² I); the null label len(means) is their equal mixture."""
  means = jnp.asarray(means, jnp.float32)
  null_label = means.shape[0]

  def denoise(z, logsnr, labels):
    alpha2, sigma2 = _alpha_sigma2(logsnr)
    alpha = jnp.sqrt(alpha2)
    flat = z.reshape(z.shape[0], -1)
    variance = alpha2 * std**2 + sigma2
    sq_dist = jnp.sum((flat[:, None, :] - alpha[:, :, None] * means[None]) ** 2, axis=-1)
    weights = jax.nn.softmax(-0.5 * sq_dist / variance, axis=-1)
    mean_uncond = weights @ means
    mean = jnp.where((labels == null_label)[:, None], mean_uncond,
                     means[jnp.minimum(labels, null_label - 1)])
    return (jnp.sqrt(sigma2) * (flat - alpha * mean) / variance).reshape(z.shape)

  return denoise


def reference_grid(num_steps, logsnr_min=-20.0, logsnr_max=20.0):
  """λ_1 = λ_min < … < λ_T = λ_max at uniform u through the truncated-cosine map (float64)."""
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return -2.0 * np.log(np.tan(a * np.linspace(1.0, 0.0, num_steps) + b))


def reference_moments(sampler, *, num_steps, guidance_weight, mean_cond, std_cond, mean_uncond,
                      std_uncond, variance_interp=0.3):
  """Exact per-dimension mean and variance of x̂ for Gaussian c and ∅ (linear-Gaussian steps).

  ε̃ = A z − c with A = σ((1+w)/v_c − w/v_u), c = σα((1+w)μ_c/v_c − w μ_u/v_u),
  v = α² s² + σ²; x̃ = (z − σ ε̃)/α; z' from the posterior (ancestral) or α' x̃ + σ' ε̃ (DDIM).
  `guidance_weight` is one w, or a function w(λ) of the level.
  """
  grid = reference_grid(num_steps)
  mean, var = np.zeros_like(mean_cond, dtype=np.float64), 1.0
  for t, logsnr in enumerate(grid):
    w = guidance_weight(logsnr) if callable(guidance_weight) else guidance_weight
    alpha2, sigma2 = 1 / (1 + np.exp(-logsnr)), 1 / (1 + np.exp(logsnr))
    alpha, sigma = np.sqrt(alpha2), np.sqrt(sigma2)
    v_c, v_u = alpha2 * std_cond**2 + sigma2, alpha2 * std_uncond**2 + sigma2
    slope = sigma * ((1 + w) / v_c - w / v_u)
    offset = sigma * alpha * ((1 + w) * mean_cond / v_c - w * mean_uncond / v_u)
    x_slope, x_offset = (1 - sigma * slope) / alpha, sigma * offset / alpha
    if t == num_steps - 1:
      if sampler == 'ancestral':
        return x_slope * mean + x_offset, x_slope**2 * var
      return mean / alpha, var / alpha2  # the ODE solvers end at x̂ = z_T/α_T, no evaluation
    logsnr_next = grid[t + 1]
    alpha_next = np.sqrt(1 / (1 + np.exp(-logsnr_next)))
    sigma2_next = 1 / (1 + np.exp(logsnr_next))
    if sampler == 'ancestral':
      r = np.exp(logsnr - logsnr_next)
      z_slope = r * alpha_next / alpha + (1 - r) * alpha_next * x_slope
      z_offset = (1 - r) * alpha_next * x_offset
      noise_var = ((1 - r) * sigma2_next) ** (1 - variance_interp) * (
          (1 - r) * sigma2) ** variance_interp
    else:
      sigma_next = np.sqrt(sigma2_next)
      z_slope = alpha_next * x_slope + sigma_next * slope
      z_offset = alpha_next * x_offset - sigma_next * offset
      noise_var = 0.0
    mean, var = z_slope * mean + z_offset, z_slope**2 * var + noise_var


def _sampler(name, denoise, *, num_steps, null_label, **static):
  return jax.jit(functools.partial(samplers.get_sampler(name), denoise, image_shape=IMAGE_SHAPE,
                                   num_steps=num_steps, null_label=null_label, **static))


def _class_means(num_classes, scale, seed=0):
  return scale * np.random.default_rng(seed).choice([-1.0, 1.0], size=(num_classes, DIM))


# One small guided problem whose compiled samplers several tests share (compiles dominate the
# run time): three classes, T = 8, per-example w. `SMALL_TRACES` counts network traces.
SMALL_MEANS, SMALL_STD, SMALL_STEPS = _class_means(3, 0.5), 0.3, 8
SMALL_LABELS = jnp.array([0, 1, 2, 0, 1, 2, 2, 1], jnp.int32)
SMALL_TRACES = []


def _small_denoise(z, logsnr, labels):
  SMALL_TRACES.append(z.shape)
  return mixture_denoiser(SMALL_MEANS, SMALL_STD)(z, logsnr, labels)


@functools.cache
def _small_sampler(name):
  return _sampler(name, _small_denoise, num_steps=SMALL_STEPS, null_label=3)


@functools.cache
def _small_sweep(name):
  return jax.jit(functools.partial(samplers.sample_sweep, _small_sampler(name)))


def _per_example(w, batch=8):
  return jnp.full((batch,), w, jnp.float32)


@pytest.mark.parametrize('name', SAMPLERS)
def test_unguided_samples_reproduce_class_means_and_stds(name):
  means, std = _class_means(3, 0.8), 0.3
  batch_sizes = []

  def denoise(z, logsnr, labels):
    jax.debug.callback(lambda z: batch_sizes.append(z.shape[0]), z)
    return mixture_denoiser(means, std)(z, logsnr, labels)

  labels = jnp.arange(3 * 1024) % 3
  x = _sampler(name, denoise, num_steps=256, null_label=3)(
      key=jax.random.key(0), labels=labels, guidance_weight=0.0)
  x = np.asarray(x).reshape(-1, DIM)
  jax.effects_barrier()
  levels = 256 if name == 'ancestral' else 255  # DDIM does not evaluate at λ_max
  assert batch_sizes == [2 * 3072] * levels  # one guided call of [c; ∅] per level
  for c in range(3):
    rows = x[np.asarray(labels) == c]
    mean_error = np.sqrt(np.mean((rows.mean(0) - means[c]) ** 2)) / np.sqrt(np.mean(means[c]**2))
    assert mean_error <= 0.03, (c, mean_error)
    std_error = abs((rows - rows.mean(0)).std() / std - 1)
    assert std_error <= 0.03, (c, std_error)
  # The unguided path: one conditional call of batch B per level, the same samples as w = 0.
  batch_sizes.clear()
  unguided = _sampler(name, denoise, num_steps=256, null_label=3, guide=False)(
      key=jax.random.key(0), labels=labels)
  jax.effects_barrier()
  assert batch_sizes == [3072] * levels
  np.testing.assert_allclose(np.asarray(unguided).reshape(-1, DIM), x, atol=1e-4)


@pytest.mark.parametrize('name', SAMPLERS)
def test_guided_gaussian_moments_match_the_exact_recursion(name):
  # ∅ wider than c and centred elsewhere: guidance pushes the mean away from μ_u and shrinks
  # the spread. Per-example w: three weights in one batch; v is traced data too.
  num_steps, per_weight = 24, 1024
  mean_cond, mean_uncond = 0.5 * np.ones(DIM), np.linspace(-0.3, 0.3, DIM)
  std_cond, std_uncond = 0.4, 0.7
  denoise = gaussian_denoiser([mean_cond, mean_uncond], [std_cond, std_uncond])
  sample = _sampler(name, denoise, num_steps=num_steps, null_label=1)
  weights = np.array([0.0, 1.0, 4.0])
  for variance_interp in [0.0, 0.3, 1.0] if name == 'ancestral' else [None]:
    extra = {} if variance_interp is None else {'variance_interp': variance_interp}
    x = sample(key=jax.random.key(1), labels=jnp.zeros(3 * per_weight, jnp.int32),
               guidance_weight=jnp.repeat(weights, per_weight), **extra)
    x = np.asarray(x).reshape(3, per_weight, DIM)
    for k, w in enumerate(weights):
      mean_ref, var_ref = reference_moments(
          name, num_steps=num_steps, guidance_weight=w, mean_cond=mean_cond,
          std_cond=std_cond, mean_uncond=mean_uncond, std_uncond=std_uncond,
          variance_interp=variance_interp or 0.0)
      if w > 0:  # The closed form itself moves the way guidance should.
        assert np.all((mean_ref - mean_cond) * (mean_cond - mean_uncond) >= 0)
        assert var_ref < std_cond**2
      mean_tolerance = 4 * np.sqrt(var_ref / per_weight) + 1e-3
      np.testing.assert_allclose(x[k].mean(0), mean_ref, atol=mean_tolerance,
                                 err_msg=f'w={w} v={variance_interp}')
      np.testing.assert_allclose(x[k].var(0).mean(), var_ref, rtol=0.03,
                                 err_msg=f'w={w} v={variance_interp}')


def reference_ddim_mixture_moments(*, num_steps, guidance_weight, m, std):
  """Mean and variance of x̂ along e for classes N(±m e, s² I), class +m, by quadrature.

  The class means differ only along e, so the mixture weights and guidance act on z·e alone:
  the 1-D DDIM map z_1 ↦ x̂ is evaluated at Gauss–Hermite nodes of z_1 ~ N(0, 1).
  """
  nodes, node_weights = np.polynomial.hermite_e.hermegauss(120)
  node_weights = node_weights / node_weights.sum()
  grid = reference_grid(num_steps)
  z = nodes
  for t, logsnr in enumerate(grid):
    alpha2, sigma2 = 1 / (1 + np.exp(-logsnr)), 1 / (1 + np.exp(logsnr))
    alpha, sigma = np.sqrt(alpha2), np.sqrt(sigma2)
    v = alpha2 * std**2 + sigma2
    weight_plus = 1 / (1 + np.exp(-2 * z * alpha * m / v))  # softmax of the two log-likelihoods
    mean_uncond = m * (2 * weight_plus - 1)
    eps = (sigma * ((1 + guidance_weight) * (z - alpha * m)
                    - guidance_weight * (z - alpha * mean_uncond)) / v)
    x = (z - sigma * eps) / alpha
    if t == num_steps - 1:
      x = z / alpha  # DDIM ends at x̂ = z_T/α_T with no network evaluation at λ_max
      mean = np.sum(node_weights * x)
      return mean, np.sum(node_weights * (x - mean) ** 2)
    logsnr_next = grid[t + 1]
    z = (np.sqrt(1 / (1 + np.exp(-logsnr_next))) * x
         + np.sqrt(1 / (1 + np.exp(logsnr_next))) * eps)


def test_guided_mixture_moves_away_from_the_other_class():
  num_steps, per_weight, std = 24, 1024, 0.5
  direction = np.ones(DIM) / np.sqrt(DIM)
  m = 1.2
  means = np.stack([m * direction, -m * direction])
  weights = np.array([0.0, 0.5, 2.0])
  labels = jnp.zeros(3 * per_weight, jnp.int32)
  along = {}
  for name in SAMPLERS:
    sample = _sampler(name, mixture_denoiser(means, std), num_steps=num_steps, null_label=2)
    x = sample(key=jax.random.key(2), labels=labels,
               guidance_weight=jnp.repeat(weights, per_weight))
    x = np.asarray(x).reshape(3, per_weight, DIM)
    along[name] = x @ direction  # [K, N]
    across = x - along[name][..., None] * direction
    # Orthogonal to the class axis ε_u = ε_c: no pull, mean stays on the axis.
    np.testing.assert_allclose(across.mean(1), 0.0, atol=4 * std / np.sqrt(per_weight))
  for name in SAMPLERS:
    shift = along[name].mean(1)
    standard_error = along[name].std(1) / np.sqrt(per_weight)
    assert shift[0] == pytest.approx(m, abs=4 * standard_error[0])
    # Away from the other class mean −m e, and further with larger w.
    assert shift[1] > shift[0] + 2 * standard_error[1]
    assert shift[2] > shift[1] + 2 * standard_error[2]
  # Magnitude for DDIM from the 1-D quadrature reference.
  for k, w in enumerate(weights):
    mean_ref, var_ref = reference_ddim_mixture_moments(
        num_steps=num_steps, guidance_weight=w, m=m, std=std)
    assert along['ddim'][k].mean() == pytest.approx(mean_ref, abs=4 * np.sqrt(var_ref / per_weight))
    assert along['ddim'][k].var() == pytest.approx(var_ref, rel=0.1)


@pytest.mark.parametrize('name', SAMPLERS)
def test_program_size_does_not_grow_with_the_number_of_steps(name):
  traces = []

  def denoise(z, logsnr, labels):
    traces.append(1)
    return mixture_denoiser(SMALL_MEANS, SMALL_STD)(z, logsnr, labels)

  def num_equations(num_steps):
    sampler = functools.partial(samplers.get_sampler(name), denoise, image_shape=IMAGE_SHAPE,
                                num_steps=num_steps, null_label=3)
    jaxpr = jax.make_jaxpr(lambda key, w: sampler(key=key, labels=SMALL_LABELS,
                                                  guidance_weight=w))(jax.random.key(0), 1.0)
    return len(jaxpr.eqns)

  assert num_equations(4) == num_equations(1024)
  assert len(traces) == 2  # the network is traced once per program


@pytest.mark.parametrize('name', SAMPLERS)
def test_changing_the_weight_does_not_retrace(name):
  sample = _small_sampler(name)
  outputs = [sample(key=jax.random.key(0), labels=SMALL_LABELS, guidance_weight=_per_example(w))
             for w in [0.0, 0.5, 3.0]]
  traces = len(SMALL_TRACES)
  outputs.append(sample(key=jax.random.key(0), labels=SMALL_LABELS,
                        guidance_weight=_per_example(-0.5)))
  assert len(SMALL_TRACES) == traces
  assert not np.allclose(outputs[0], outputs[2], atol=1e-3)
  sweep = _small_sweep(name)
  sweep(guidance_weights=jnp.array([0.0, 1.0]), key=jax.random.key(0), labels=SMALL_LABELS)
  traces = len(SMALL_TRACES)
  sweep(guidance_weights=jnp.array([2.0, 5.0]), key=jax.random.key(0), labels=SMALL_LABELS)
  assert len(SMALL_TRACES) == traces


@pytest.mark.parametrize('name', SAMPLERS)
def test_samples_are_reproducible_from_the_key(name):
  sample = functools.partial(_small_sampler(name), labels=SMALL_LABELS,
                             guidance_weight=_per_example(1.0))
  first = sample(key=jax.random.key(5))
  np.testing.assert_array_equal(first, sample(key=jax.random.key(5)))
  other = sample(key=jax.random.key(6))
  assert np.all(np.abs(np.asarray(first - other)).reshape(8, -1).max(1) > 1e-2)
  # Two examples of one class in one batch get different noise.
  assert np.abs(np.asarray(first[0] - first[3])).max() > 1e-2


def test_samples_do_not_depend_on_how_the_batch_is_split():
  # Both samplers draw their noise through the same per-example keys; ancestral uses them all.
  sample = _small_sampler('ancestral')
  weights = jnp.linspace(0.0, 2.0, 8)
  key = jax.random.key(7)
  whole = sample(key=key, labels=SMALL_LABELS, guidance_weight=weights)
  halves = [sample(key=key, labels=SMALL_LABELS[i:i + 4], guidance_weight=weights[i:i + 4],
                   example_ids=jnp.arange(i, i + 4)) for i in (0, 4)]
  np.testing.assert_allclose(whole, jnp.concatenate(halves), rtol=1e-5, atol=1e-5)
  # Without the global ids the second half would reuse the first half's noise.
  unshifted = sample(key=key, labels=SMALL_LABELS[4:], guidance_weight=weights[4:])
  assert np.abs(np.asarray(unshifted - whole[4:])).max() > 1e-2


@pytest.mark.parametrize('name', SAMPLERS)
def test_sample_sweep_equals_a_loop_over_weights(name):
  weights = jnp.array([0.0, 0.3, 2.0])
  swept = _small_sweep(name)(guidance_weights=weights, key=jax.random.key(9),
                             labels=SMALL_LABELS)
  assert swept.shape == (3, 8) + IMAGE_SHAPE
  for k, w in enumerate(weights):
    np.testing.assert_allclose(
        swept[k], _small_sampler(name)(key=jax.random.key(9), labels=SMALL_LABELS,
                                       guidance_weight=_per_example(w)),
        rtol=1e-5, atol=1e-5)
  assert not np.allclose(swept[0], swept[2], atol=1e-3)


def test_chunk_count_is_the_fewest_calls_that_fit():
  assert samplers.chunk_count(256, max_batch=None) == 1
  assert samplers.chunk_count(256, max_batch=64) == 4
  assert samplers.chunk_count(256, max_batch=64, devices=8) == 1  # 32 rows per device
  assert samplers.chunk_count(256, max_batch=64, lanes=9) == 64  # 9 × 4 rows; 9 × 8 would be 72
  assert samplers.chunk_count(24, max_batch=5) == 6  # 4 rows: 24 / 5 rounded up to a divisor of 24
  assert samplers.chunk_count(7, max_batch=2) == 7  # a prime: one row a call
  assert samplers.chunk_count(16, max_batch=1, lanes=3) == 16  # nothing fits: one row per device and lane


def test_chunked_network_calls_give_the_same_samples_in_calls_of_at_most_max_batch_rows():
  """A sweep of K = 2 weights (the vmap's lanes) over B = 8 examples, the network called in chunks of at
  most 8 rows all lanes counted: 4 calls of 4 rows per lane for the 2B = 16 guided call, and at the levels
  the guidance interval skips, 2 calls of 4 rows for the B = 8 conditional one."""
  rows_seen = []

  def denoise(z, logsnr, labels):
    rows_seen.append(z.shape[0])
    return mixture_denoiser(SMALL_MEANS, SMALL_STD)(z, logsnr, labels)

  weights = jnp.array([0.5, 2.0])
  params = guidance.GuidanceParams(w=weights, logsnr_lo=-2.0, logsnr_hi=2.0)
  samples = {}
  for max_batch in (None, 8):
    chunked = samplers.in_chunks(denoise, max_batch=max_batch, lanes=2)
    sampler = functools.partial(samplers.sample, chunked, image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS,
                                null_label=3, solver='ddim', method='interval')
    rows_seen.clear()
    samples[max_batch] = jax.jit(functools.partial(samplers.sample_sweep, sampler))(
        params=params, key=jax.random.key(3), labels=SMALL_LABELS)
    assert sorted(set(rows_seen)) == ([8, 16] if max_batch is None else [4]), rows_seen
  np.testing.assert_allclose(samples[8], samples[None], rtol=1e-6, atol=1e-6)
  assert not np.allclose(samples[None][0], samples[None][1], atol=1e-3)  # the weights matter


@pytest.mark.parametrize('name', SAMPLERS)
def test_clip_x_keeps_the_prediction_in_range(name):
  # Data at 3, far outside [−1, 1] (unclipped, the samplers reproduce it: tests above); with
  # clipping every x̃ that sets the next z is clipped, so samples end at the boundary.
  denoise = gaussian_denoiser([3.0 * np.ones(DIM), np.zeros(DIM)], [0.05, 1.0])
  clipped = _sampler(name, denoise, num_steps=16, null_label=1, clip_x=True, guide=False)(
      key=jax.random.key(0), labels=jnp.zeros(8, jnp.int32))
  assert np.all(np.abs(np.asarray(clipped)) <= 1.0)
  np.testing.assert_allclose(clipped, 1.0, atol=0.01)


def _zero_eps(z, logsnr, labels):
  """ε ≡ 0, so x̃ = z/α: every step is a closed form of the noise alone."""
  del logsnr, labels
  return jnp.zeros_like(z)


def _documented_noise(key, example_id, index):
  """Example `example_id`'s draw `index`: N(0, I) from fold_in(fold_in(key, id), index)."""
  example_key = jax.random.fold_in(key, example_id)
  return np.asarray(jax.random.normal(jax.random.fold_in(example_key, index), IMAGE_SHAPE),
                    np.float64)


def test_ancestral_noise_and_variances_follow_the_documented_formulas():
  # With x̃ = z/α the posterior mean is (α'/α) z, so x̂ = z_1/α_1 + Σ_t s_t n_t / α_{t+1} with
  # s_t² = ((1 − r) σ'²)^{1−v} ((1 − r) σ²)^v, r = e^{λ−λ'}, n_t drawn from fold_in(k_i, t).
  num_steps, variance_interp, key = 5, 0.3, jax.random.key(11)
  example_ids = jnp.array([3, 17])
  x = _sampler('ancestral', _zero_eps, num_steps=num_steps, null_label=1, guide=False,
               logsnr_min=-4.0, logsnr_max=6.0)(
                   key=key, labels=jnp.zeros(2, jnp.int32), example_ids=example_ids,
                   variance_interp=variance_interp)
  grid = reference_grid(num_steps, -4.0, 6.0)
  alpha = np.sqrt(1 / (1 + np.exp(-grid)))
  sigma2 = 1 / (1 + np.exp(grid))
  for row, example_id in enumerate(np.asarray(example_ids)):
    expected = _documented_noise(key, example_id, 0) / alpha[0]
    for t in range(num_steps - 1):
      one_minus_r = 1 - np.exp(grid[t] - grid[t + 1])
      std = np.sqrt((one_minus_r * sigma2[t + 1]) ** (1 - variance_interp)
                    * (one_minus_r * sigma2[t]) ** variance_interp)
      expected += std * _documented_noise(key, example_id, t + 1) / alpha[t + 1]
    np.testing.assert_allclose(x[row], expected, rtol=1e-4, atol=1e-4)


def test_ddim_with_clipping_recomputes_eps_from_the_clipped_prediction():
  # A model predicting x̂ = κ z/α, with κ = 3 below λ = 0 (x̂ often clipped) and 0.1 above (x̂
  # back inside [−1, 1], so earlier clips show in the result). DDIM steps
  # z' = α' x̃ + σ' (z − α x̃)/σ with x̃ = clip(x̂); the last level returns x̃(z_T).
  num_steps, key = 6, jax.random.key(12)
  gain = lambda logsnr: jnp.where(logsnr < 0, 3.0, 0.1)

  def denoise(z, logsnr, labels):
    del labels
    sigma = jnp.sqrt(jax.nn.sigmoid(-logsnr))[:, None, None, None]
    return (1 - gain(logsnr)[:, None, None, None]) * z / sigma

  x = _sampler('ddim', denoise, num_steps=num_steps, null_label=1, guide=False, clip_x=True,
               logsnr_min=-3.0, logsnr_max=3.0)(key=key, labels=jnp.zeros(4, jnp.int32))
  grid = reference_grid(num_steps, -3.0, 3.0)
  alpha, sigma = np.sqrt(1 / (1 + np.exp(-grid))), np.sqrt(1 / (1 + np.exp(grid)))
  x_clipped = lambda z, t: np.clip(np.where(grid[t] < 0, 3.0, 0.1) * z / alpha[t], -1, 1)
  for row in range(4):
    z = _documented_noise(key, row, 0)
    for t in range(num_steps - 1):
      x_t = x_clipped(z, t)
      z = alpha[t + 1] * x_t + sigma[t + 1] * (z - alpha[t] * x_t) / sigma[t]
    # No evaluation at the last level: x̂ = clip(z_T/α_T).
    np.testing.assert_allclose(x[row], np.clip(z / alpha[-1], -1, 1), rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise_clear_errors():
  sampler = functools.partial(samplers.ancestral_sample, gaussian_denoiser([[0.0]], [1.0]),
                              key=jax.random.key(0), image_shape=IMAGE_SHAPE, null_label=1)
  labels = jnp.zeros(4, jnp.int32)
  with pytest.raises(ValueError, match='num_steps must be >= 2'):
    sampler(labels=labels, num_steps=1)
  with pytest.raises(ValueError, match='num_steps must be a Python int'):
    sampler(labels=labels, num_steps=2.5)
  with pytest.raises(ValueError, match='guidance_weight must be a scalar or have shape'):
    sampler(labels=labels, num_steps=4, guidance_weight=jnp.zeros(3))
  with pytest.raises(ValueError, match='example_ids must have the shape of labels'):
    sampler(labels=labels, num_steps=4, example_ids=jnp.arange(5))
  with pytest.raises(ValueError, match='labels must have shape'):
    sampler(labels=labels[None], num_steps=4)
  with pytest.raises(ValueError, match='variance_interp must lie in'):
    sampler(labels=labels, num_steps=4, variance_interp=1.5)
  with pytest.raises(ValueError, match='image_shape must be a tuple'):
    samplers.ddim_sample(gaussian_denoiser([[0.0]], [1.0]), key=jax.random.key(0),
                         labels=labels, image_shape=16, num_steps=4, null_label=1)
  with pytest.raises(ValueError, match="Unknown sampler 'euler'"):
    samplers.get_sampler('euler')
  with pytest.raises(ValueError, match=r'eta \(DDIM\) must lie in \[0, 1\]'):
    samplers.ddim_sample(gaussian_denoiser([[0.0]], [1.0]), key=jax.random.key(0), labels=labels,
                         image_shape=IMAGE_SHAPE, num_steps=4, null_label=1, eta=1.5)
  with pytest.raises(ValueError, match=r'CFG\+\+ .* needs a solver that re-noises with ε'):
    sampler(labels=labels, num_steps=4, method='cfgpp')
  with pytest.raises(ValueError, match="Unknown guidance method 'pag'"):
    sampler(labels=labels, num_steps=4, method='pag')
  with pytest.raises(ValueError, match='autoguidance needs a guide network'):
    sampler(labels=labels, num_steps=4, method='autoguidance')
  with pytest.raises(ValueError, match='guidance parameter rescale must be a scalar'):
    sampler(labels=labels, num_steps=4, params=samplers.GuidanceParams(rescale=jnp.zeros(4)))
  with pytest.raises(ValueError, match=r'guidance_weights must have shape \[K\]'):
    samplers.sample_sweep(sampler, guidance_weights=1.0, labels=labels, num_steps=4)


# ----------------------------------------------------------------------------------------------
# The open seam: today's cfg + ancestral kept bit for bit, skipped calls, NFE, traced parameters.

def _frozen_ancestral(denoise, *, key, labels, image_shape, num_steps, null_label, guidance_weight,
                      variance_interp, clip_x, guide):
  """A frozen copy of the sampling maths before the guidance seam (commit 373290b): Algorithm 2."""
  from cfg import diffusion as d
  labels = jnp.asarray(labels, jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(labels.shape[0]))
  noise = lambda index: jax.vmap(
      lambda k: jax.random.normal(jax.random.fold_in(k, index), image_shape))(keys)
  w = jnp.asarray(guidance_weight, jnp.float32)
  grid = d.sampling_grid(num_steps)
  grid_next = jnp.append(grid[1:], grid[-1] + 1.0)

  def level(carry, inputs):
    z, _ = carry
    step, logsnr, logsnr_next = inputs
    logsnr = jnp.full(labels.shape, logsnr, dtype=z.dtype)
    if guide:
      eps = denoise(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                    jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
      eps_c, eps_u = jnp.split(eps, 2)
      wb = d.broadcast_from_left(w, eps_c.shape).astype(eps_c.dtype)
      eps = (1.0 + wb) * eps_c - wb * eps_u
    else:
      eps = denoise(z, logsnr, labels)
    eps = eps.astype(z.dtype)
    x = d.x_from_eps(z=z, eps=eps, logsnr=logsnr)
    if clip_x:
      x = jnp.clip(x, -1.0, 1.0)
      eps = d.eps_from_x(z=z, x=x, logsnr=logsnr)
    mean, posterior_variance = d.posterior(z=z, x=x, logsnr=logsnr, logsnr_next=logsnr_next)
    log_variance = ((1.0 - variance_interp) * jnp.log(posterior_variance) + variance_interp
                    * jnp.log(d.transition_variance(logsnr=logsnr, logsnr_next=logsnr_next)))
    z_next = mean + d.broadcast_from_left(jnp.exp(0.5 * log_variance), z.shape) * noise(step + 1)
    return (z_next, x), None

  z = noise(0)
  (_, x), _ = jax.lax.scan(level, (z, jnp.zeros_like(z)), (jnp.arange(num_steps), grid, grid_next))
  return x


@pytest.mark.parametrize('clip_x, guide', [(False, True), (True, True), (True, False)])
def test_cfg_ancestral_is_bit_identical_to_the_code_before_the_seam(clip_x, guide):
  static = dict(image_shape=IMAGE_SHAPE, num_steps=SMALL_STEPS, null_label=3, clip_x=clip_x,
                guide=guide)
  weights = jnp.linspace(-0.5, 3.0, 8)
  new = jax.jit(functools.partial(samplers.ancestral_sample, _small_denoise, variance_interp=0.3,
                                  **static))
  old = jax.jit(functools.partial(_frozen_ancestral, _small_denoise, variance_interp=0.3, **static))
  args = dict(key=jax.random.key(4), labels=SMALL_LABELS, guidance_weight=weights)
  np.testing.assert_array_equal(new(**args), old(**args))
  # The same through the open API with the method and the solver named.
  named = jax.jit(functools.partial(samplers.sample, _small_denoise, method='cfg', solver='ancestral',
                                    **static))
  np.testing.assert_array_equal(named(key=args['key'], labels=SMALL_LABELS,
                                      params=samplers.GuidanceParams(w=weights)), old(**args))
