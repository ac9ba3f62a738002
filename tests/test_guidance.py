"""Tests of cfg/guidance.py: Eq. 6 with the paper's w, one batched call, traced w."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg import guidance

NULL_LABEL = 5
BATCH = 3
SHAPE = (BATCH, 4, 4, 2)


def _denoise(z, logsnr, labels):
  """A deterministic ε that depends non-linearly on z, λ and the label (∅ included)."""
  label_term = jnp.sin(1.0 + labels.astype(jnp.float32))[:, None, None, None]
  return jnp.tanh(z) * label_term + 0.1 * logsnr[:, None, None, None] + label_term**2


class _RecordingDenoiser:
  """Wraps `_denoise` and records the batch size of every call (at trace time under jit)."""

  def __init__(self):
    self.batch_sizes = []

  def __call__(self, z, logsnr, labels):
    self.batch_sizes.append((z.shape[0], logsnr.shape[0], labels.shape[0]))
    return _denoise(z, logsnr, labels)


def _inputs():
  z = jax.random.normal(jax.random.key(0), SHAPE)
  logsnr = jnp.array([-3.0, 0.5, 4.0])
  labels = jnp.array([0, 2, 4], jnp.int32)
  return z, logsnr, labels


def _reference_eps(z, logsnr, labels):
  """(ε_c, ε_u) from two separate calls."""
  return (np.asarray(_denoise(z, logsnr, labels)),
          np.asarray(_denoise(z, logsnr, jnp.full_like(labels, NULL_LABEL))))


def test_weight_zero_is_conditional_and_minus_one_is_unconditional():
  z, logsnr, labels = _inputs()
  eps_cond, eps_uncond = _reference_eps(z, logsnr, labels)
  guided = functools.partial(guidance.guided_eps, _denoise, z, logsnr, labels,
                             null_label=NULL_LABEL)
  np.testing.assert_allclose(guided(guidance_weight=0.0), eps_cond, rtol=1e-6)
  np.testing.assert_allclose(guided(guidance_weight=-1.0), eps_uncond, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('guidance_weight', [0.3, 4.0, np.array([0.0, 1.5, 7.0])])
def test_batched_call_equals_two_separate_calls(guidance_weight):
  z, logsnr, labels = _inputs()
  eps_cond, eps_uncond = _reference_eps(z, logsnr, labels)
  w = np.reshape(guidance_weight, (-1, 1, 1, 1))
  expected = (1 + w) * eps_cond - w * eps_uncond
  got = guidance.guided_eps(_denoise, z, logsnr, labels, guidance_weight=guidance_weight,
                            null_label=NULL_LABEL)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The same value in the scale convention s = 1 + w: ε_u + s (ε_c − ε_u).
  s = guidance.scale_from_weight(w)
  np.testing.assert_allclose(got, eps_uncond + s * (eps_cond - eps_uncond), rtol=1e-5,
                             atol=1e-5)


def test_both_branches_come_from_one_call_of_batch_two_b():
  z, logsnr, labels = _inputs()
  denoise = _RecordingDenoiser()
  eps_cond, eps_uncond = guidance.conditional_and_unconditional_eps(
      denoise, z, logsnr, labels, null_label=NULL_LABEL)
  assert denoise.batch_sizes == [(2 * BATCH,) * 3]
  expected_cond, expected_uncond = _reference_eps(z, logsnr, labels)
  np.testing.assert_allclose(eps_cond, expected_cond, rtol=1e-6)
  np.testing.assert_allclose(eps_uncond, expected_uncond, rtol=1e-6)
  denoise.batch_sizes.clear()
  guidance.guided_eps(denoise, z, logsnr, labels, guidance_weight=1.0, null_label=NULL_LABEL)
  assert denoise.batch_sizes == [(2 * BATCH,) * 3]


def test_scalar_logsnr_is_broadcast_to_the_batch():
  z, _, labels = _inputs()
  denoise = _RecordingDenoiser()
  got = guidance.guided_eps(denoise, z, jnp.float32(1.5), labels, guidance_weight=2.0,
                            null_label=NULL_LABEL)
  eps_cond, eps_uncond = _reference_eps(z, jnp.full((BATCH,), 1.5), labels)
  np.testing.assert_allclose(got, 3.0 * eps_cond - 2.0 * eps_uncond, rtol=1e-5, atol=1e-5)
  assert denoise.batch_sizes == [(2 * BATCH,) * 3]


def test_vmap_over_weights_equals_a_loop():
  z, logsnr, labels = _inputs()
  weights = jnp.array([-1.0, 0.0, 0.5, 3.0])
  guided = lambda w: guidance.guided_eps(_denoise, z, logsnr, labels, guidance_weight=w,
                                         null_label=NULL_LABEL)
  swept = jax.vmap(guided)(weights)
  assert swept.shape == (4,) + SHAPE
  for k, w in enumerate(weights):
    np.testing.assert_allclose(swept[k], guided(w), rtol=1e-6, atol=1e-6)


def test_changing_the_weight_does_not_retrace_a_guided_step():
  z, logsnr, labels = _inputs()
  denoise = _RecordingDenoiser()
  step = jax.jit(lambda z, w: guidance.guided_eps(denoise, z, logsnr, labels,
                                                  guidance_weight=w, null_label=NULL_LABEL))
  eps_cond, eps_uncond = _reference_eps(z, logsnr, labels)
  for w in [0.0, 0.1, 2.0, -1.0]:
    np.testing.assert_allclose(step(z, w), (1 + w) * eps_cond - w * eps_uncond, rtol=1e-5,
                               atol=1e-5)
  assert len(denoise.batch_sizes) == 1


# ----------------------------------------------------------------------------------------------
# The methods on hand-made predictions, against their papers' formulas (numpy, float64).

def _branches(seed=0, batch=3):
  """Random (z, λ, Branches) with ε_c, ε_u unrelated; x̂ = (z − σ ε)/α in both."""
  rng = np.random.default_rng(seed)
  z, eps_c, eps_u = (rng.normal(size=(batch, 4, 4, 2)).astype(np.float32) for _ in range(3))
  logsnr = np.array([-2.0, 0.5, 3.0], np.float32)[:batch]
  pred = lambda e: guidance.as_pred(z=jnp.asarray(z), eps=jnp.asarray(e), logsnr=jnp.asarray(logsnr))
  return z, logsnr, guidance.Branches(pred(eps_c), pred(eps_u))


def _np(x):
  return np.asarray(x, np.float64)


def _alpha_sigma(logsnr):
  return (np.sqrt(1 / (1 + np.exp(-_np(logsnr))))[:, None, None, None],
          np.sqrt(1 / (1 + np.exp(_np(logsnr))))[:, None, None, None])


def _run(method, params, seed=0, state=()):
  z, logsnr, branches = _branches(seed)
  method = guidance.get_method(method) if isinstance(method, str) else method
  w = method.weight(params=params, logsnr=jnp.asarray(logsnr))
  pred, state = method.combine(branches=branches, state=state, w=w, params=params, z=jnp.asarray(z),
                               logsnr=jnp.asarray(logsnr))
  for post in method.post:
    pred = post(pred=pred, branches=branches, params=params, z=jnp.asarray(z), logsnr=jnp.asarray(logsnr))
  return pred, state, (z, logsnr, branches)


def _cfg_reference(branches, w):
  return (1 + w) * _np(branches.main.eps) - w * _np(branches.ref.eps)


@pytest.mark.parametrize('method, params', [
    ('interval', guidance.GuidanceParams(w=1.7)),
    ('schedule', guidance.GuidanceParams(w=1.7)),
    ('rescale', guidance.GuidanceParams(w=1.7, rescale=0.0)),
])
def test_methods_with_no_op_settings_are_cfg_bit_for_bit(method, params):
  pred, _, _ = _run(method, guidance.as_float32(params))
  reference, _, _ = _run('cfg', guidance.as_float32(params))
  np.testing.assert_array_equal(pred.eps, reference.eps)
  np.testing.assert_array_equal(pred.x, reference.x)


def test_apg_with_eta_one_no_cap_no_momentum_is_cfg():
  params = guidance.as_float32(guidance.GuidanceParams(w=2.5, apg_eta=1.0, apg_beta=0.0))
  z, logsnr, branches = _branches()
  pred, state, _ = _run('apg', params, state=jnp.zeros_like(jnp.asarray(z)))
  alpha, sigma = _alpha_sigma(logsnr)
  guided = _cfg_reference(branches, 2.5)
  np.testing.assert_allclose(pred.eps, guided, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pred.x, (_np(z) - sigma * guided) / alpha, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state, _np(branches.main.x) - _np(branches.ref.x), rtol=1e-5, atol=1e-5)


def test_apg_matches_its_formula():
  # Sadat et al. 2024 (diffusers' order): Δ = D_c − D_u + β Δ₋; Δ ← Δ min(1, r/‖Δ‖);
  # D̃ = D_c + w (Δ⊥ + η Δ∥), ∥ along D_c; the state carried on is Δ before the cap.
  w, eta, beta, cap = 1.5, 0.3, -0.5, 2.0
  params = guidance.as_float32(guidance.GuidanceParams(w=w, apg_eta=eta, apg_beta=beta,
                                                       apg_norm_cap=cap))
  z, logsnr, branches = _branches(seed=1)
  previous = np.random.default_rng(5).normal(size=z.shape).astype(np.float32)
  pred, state, _ = _run('apg', params, seed=1, state=jnp.asarray(previous))
  x_c, x_u = _np(branches.main.x), _np(branches.ref.x)
  for i in range(z.shape[0]):
    delta = x_c[i] - x_u[i] + beta * previous[i]
    np.testing.assert_allclose(state[i], delta, rtol=1e-5, atol=1e-5)
    capped = delta * min(1.0, cap / np.linalg.norm(delta))
    parallel = np.sum(capped * x_c[i]) / np.sum(x_c[i] * x_c[i]) * x_c[i]
    expected = x_c[i] + w * (capped - parallel + eta * parallel)
    np.testing.assert_allclose(pred.x[i], expected, rtol=1e-4, atol=1e-4)
    alpha, sigma = _alpha_sigma(logsnr[i:i + 1])
    np.testing.assert_allclose(pred.eps[i], (_np(z[i]) - alpha[0] * expected) / sigma[0],
                               rtol=1e-3, atol=1e-3)


def test_rescale_matches_its_formula():
  # Lin et al. 2023 on ε (as diffusers): ε_r = ε̃ std(ε_c)/std(ε̃); ε = φ ε_r + (1 − φ) ε̃.
  phi, w = 0.7, 3.0
  pred, _, (_, _, branches) = _run('rescale', guidance.as_float32(guidance.GuidanceParams(w=w, rescale=phi)))
  guided = _cfg_reference(branches, w)
  axes = (1, 2, 3)
  ratio = _np(branches.main.eps).std(axis=axes, keepdims=True) / guided.std(axis=axes, keepdims=True)
  np.testing.assert_allclose(pred.eps, phi * guided * ratio + (1 - phi) * guided, rtol=1e-5, atol=1e-5)


def test_dynamic_threshold_matches_its_formula():
  # Imagen: s = max(1, percentile_p |x̃|) per example; x̃ ← clip(x̃, −s, s)/s; ε̂ from the new x̃.
  w, p = 4.0, 90.0
  pred, _, (z, logsnr, branches) = _run('threshold', guidance.as_float32(guidance.GuidanceParams(w=w, percentile=p)))
  alpha, sigma = _alpha_sigma(logsnr)
  x = (_np(z) - sigma * _cfg_reference(branches, w)) / alpha
  s = np.maximum(1.0, np.percentile(np.abs(x).reshape(len(x), -1), p, axis=1))[:, None, None, None]
  assert np.all(s > 1)  # the case where thresholding acts
  expected = np.clip(x, -s, s) / s
  np.testing.assert_allclose(pred.x, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pred.eps, (_np(z) - alpha * expected) / sigma, rtol=1e-3, atol=1e-3)
  # p = 100 with every |x̃| ≤ 1 leaves x̃ as it is.
  small = guidance.Pred(eps=pred.eps, x=jnp.asarray(expected * 0.5, jnp.float32))
  kept = guidance.dynamic_threshold(pred=small, branches=branches, params=guidance.as_float32(
      guidance.GuidanceParams(percentile=100.0)), z=jnp.asarray(z), logsnr=jnp.asarray(logsnr))
  np.testing.assert_array_equal(kept.x, small.x)


def test_cfg_pp_uses_the_guided_x_and_renoises_with_the_unconditional_eps():
  w = -0.4  # CFG++'s λ = 1 + w = 0.6
  pred, _, (z, logsnr, branches) = _run('cfgpp', guidance.as_float32(guidance.GuidanceParams(w=w)))
  alpha, sigma = _alpha_sigma(logsnr)
  np.testing.assert_allclose(pred.x, (_np(z) - sigma * _cfg_reference(branches, w)) / alpha,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(pred.eps, branches.ref.eps)
  assert guidance.get_method('cfgpp').renoise_ref


def test_cfg_zero_star_matches_its_formula_and_is_cfg_when_the_optimal_scale_is_one():
  w = 2.0
  pred, _, (_, _, branches) = _run('cfg_zero_star', guidance.as_float32(guidance.GuidanceParams(w=w)))
  e_c, e_u = _np(branches.main.eps), _np(branches.ref.eps)
  scale = (np.sum(e_c * e_u, axis=(1, 2, 3)) / np.sum(e_u * e_u, axis=(1, 2, 3)))[:, None, None, None]
  # Fan et al.: v = s* v_u + s (v_c − s* v_u) with s = 1 + w.
  np.testing.assert_allclose(pred.eps, scale * e_u + (1 + w) * (e_c - scale * e_u), rtol=1e-4,
                             atol=1e-4)
  # ε_c − ε_u ⊥ ε_u makes s* = 1: then CFG-Zero* is CFG.
  z, logsnr, _ = _branches()
  rng = np.random.default_rng(3)
  e_u = rng.normal(size=z.shape)
  other = rng.normal(size=z.shape)
  other -= np.sum(other * e_u, axis=(1, 2, 3), keepdims=True) / np.sum(e_u * e_u, axis=(1, 2, 3),
                                                                        keepdims=True) * e_u
  make = lambda e: guidance.as_pred(z=jnp.asarray(z), eps=jnp.asarray(e, jnp.float32),
                                    logsnr=jnp.asarray(logsnr))
  orthogonal = guidance.Branches(make(e_u + other), make(e_u))
  star, _ = guidance.cfg_zero_star(branches=orthogonal, state=(), w=w, params=None,
                                   z=jnp.asarray(z), logsnr=jnp.asarray(logsnr))
  np.testing.assert_allclose(star.eps, _cfg_reference(orthogonal, w), rtol=1e-5, atol=1e-5)


def test_weight_schedules_follow_their_shapes():
  from cfg import diffusion
  logsnr = jnp.array([-20.0, -3.0, 0.0, 3.0, 20.0])
  u = np.asarray(diffusion.u_from_logsnr(logsnr), np.float64)
  params = guidance.as_float32(guidance.GuidanceParams(w=2.0, step_u=0.5, logsnr_lo=-1.0,
                                                       logsnr_hi=5.0))
  weight = lambda name: np.asarray(guidance.SCHEDULES[name](params=params, logsnr=logsnr))
  np.testing.assert_allclose(weight('constant'), 2.0)
  np.testing.assert_allclose(weight('linear'), 2.0 * 2 * (1 - u), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(weight('cosine'), 2.0 * (1 + np.cos(np.pi * u)), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(weight('step'), np.where(u <= 0.5, 2.0, 0.0))
  np.testing.assert_array_equal(guidance.interval_weight(params=params, logsnr=logsnr),
                                [0.0, 0.0, 2.0, 2.0, 0.0])
  # The ramps rise toward the clean end and average w over u.
  assert weight('linear')[0] < weight('linear')[-1]
  grid = jnp.asarray(diffusion.logsnr_from_u(jnp.linspace(0.0, 1.0, 2001)))
  for name in ('linear', 'cosine'):
    mean = np.asarray(guidance.SCHEDULES[name](params=params, logsnr=grid)).mean()
    assert mean == pytest.approx(2.0, rel=2e-3), name


def test_autoguidance_with_the_guide_equal_to_the_main_network_is_the_conditional_model():
  from cfg import samplers
  def main(z, logsnr, labels):  # an exact denoiser of N(m_label, 0.5² I), m non-linear in the label
    alpha2, sigma2 = (jax.nn.sigmoid(s * logsnr)[:, None, None, None] for s in (1, -1))
    mean = jnp.sin(1.0 + labels.astype(jnp.float32))[:, None, None, None] * jnp.tanh(z)
    return jnp.sqrt(sigma2) * (z - jnp.sqrt(alpha2) * mean) / (alpha2 * 0.25 + sigma2)
  common = dict(key=jax.random.key(0), labels=jnp.array([0, 2, 4], jnp.int32), image_shape=(4, 4, 2),
                num_steps=6, null_label=NULL_LABEL, solver='ddim', logsnr_min=-8.0, logsnr_max=8.0)
  # (The λ range is narrow because x̂ = (z − σε)/α at λ = −20 amplifies a one-ulp difference of
  # (1 + w) ε − w ε from ε by e^{10}.)
  unguided = samplers.sample(main, guide=False, **common)
  for w in (0.5, 3.0):
    same = samplers.sample(main, guide_denoise=main, method='autoguidance', guidance_weight=w, **common)
    np.testing.assert_allclose(same, unguided, rtol=1e-5, atol=1e-5)
  # A different guide moves the samples; both networks are called with batch B and the labels c.
  calls = []
  guide = lambda z, logsnr, labels: (calls.append(labels.shape[0]), main(z, logsnr, labels) * 0.5)[1]
  moved = samplers.sample(main, guide_denoise=guide, method='autoguidance', guidance_weight=1.0, **common)
  assert np.abs(np.asarray(moved - unguided)).max() > 1e-3
  assert calls == [3]  # traced once, batch B


def test_unknown_method_and_schedule_raise():
  with pytest.raises(ValueError, match="Unknown guidance method 'pag'"):
    guidance.get_method('pag')
  with pytest.raises(ValueError, match="Unknown guidance schedule 'square'"):
    guidance.get_method('schedule', schedule='square')
