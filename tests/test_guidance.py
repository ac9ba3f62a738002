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
