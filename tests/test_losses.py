"""Tests for cfg.losses (Algorithm 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from cfg.losses import cfg_loss, metric_means, u_bucket_names
from cfg.models import UNet

NULL_LABEL = 10
BATCH = 100_000   # one batch shape for every eager test, so JAX compiles each op once


def record_inputs(calls, output):
  """A denoiser that stores its inputs in `calls` and returns output(z, logsnr, labels)."""
  def denoise(z, logsnr, labels):
    calls.append(dict(z=np.asarray(z), logsnr=np.asarray(logsnr), labels=np.asarray(labels)))
    return output(z, logsnr, labels)
  return denoise


def true_eps_denoiser(images):
  """ε = (z − α x) / σ in float64 on the host: the exact answer the network should give."""
  def denoise(z, logsnr, labels):
    logsnr = np.asarray(logsnr, np.float64)[:, None, None, None]
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    return jnp.asarray((np.asarray(z, np.float64) - alpha * np.asarray(images, np.float64)) / sigma)
  return denoise


def batch(size=BATCH, shape=(2, 2, 1), seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(-1.0, 1.0, (size, *shape)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NULL_LABEL, size), jnp.int32)
  return images, labels


@pytest.mark.parametrize('p_uncond', [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_rate(p_uncond):
  images, labels = batch()
  size = BATCH
  calls = []
  _, metrics = cfg_loss(record_inputs(calls, lambda z, *_: z), key=jax.random.key(1), images=images,
                        labels=labels, p_uncond=p_uncond, null_label=NULL_LABEL)
  seen = calls[0]['labels']
  dropped = seen == NULL_LABEL
  np.testing.assert_array_equal(seen[~dropped], np.asarray(labels)[~dropped])
  assert float(metrics['count/uncond']) == dropped.sum()
  if p_uncond in (0.0, 1.0):
    assert dropped.mean() == p_uncond
  else:
    assert abs(dropped.mean() - p_uncond) < 5 * np.sqrt(p_uncond * (1 - p_uncond) / size)


def test_logsnr_follows_truncated_cosine():
  calls = []
  images, labels = batch()
  cfg_loss(record_inputs(calls, lambda z, *_: z), key=jax.random.key(2), images=images,
           labels=labels, p_uncond=0.1, null_label=NULL_LABEL)
  logsnr = calls[0]['logsnr'].astype(np.float64)
  assert logsnr.min() >= -20.0 - 1e-3 and logsnr.max() <= 20.0 + 1e-3
  # λ = −2 log tan(a u + b), u ~ U[0, 1]  ⇒  u = (arctan(e^{−λ/2}) − b) / a must be uniform.
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  u = (np.arctan(np.exp(-0.5 * logsnr)) - b) / a
  assert scipy.stats.kstest(u, 'uniform').pvalue > 1e-3


def test_true_eps_gives_zero_loss_and_zeros_give_one():
  images, labels = batch()
  common = dict(key=jax.random.key(3), images=images, labels=labels, p_uncond=0.2,
                null_label=NULL_LABEL)
  loss_exact, _ = cfg_loss(true_eps_denoiser(images), **common)
  assert float(loss_exact) < 1e-4
  loss_zero, metrics = cfg_loss(lambda z, *_: jnp.zeros_like(z), **common)
  # E ε² = 1; the mean of 400,000 χ²₁ draws has standard deviation sqrt(2 / 400000) ≈ 0.0022.
  assert abs(float(loss_zero) - 1.0) < 0.015
  np.testing.assert_allclose(metrics['loss'], loss_zero)


def test_bucket_metrics_average_per_u_quarter():
  images, labels = batch()
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b

  def eps_plus_u(z, logsnr, labels):
    # error = u(λ) ⇒ per-example loss u²; within [lo, hi) its mean is (hi³ − lo³) / (3 (hi − lo)).
    u = (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a
    return true_eps_denoiser(images)(z, logsnr, labels) + u[:, None, None, None]

  loss, metrics = cfg_loss(eps_plus_u, key=jax.random.key(4), images=images, labels=labels,
                           p_uncond=0.3, null_label=NULL_LABEL)
  means = metric_means(metrics)
  edges = np.linspace(0, 1, 5)
  for name, lo, hi in zip(u_bucket_names(), edges[:-1], edges[1:]):
    np.testing.assert_allclose(means[f'loss/{name}'], (hi**3 - lo**3) / (3 * (hi - lo)), rtol=0.03)
  np.testing.assert_allclose(means['loss/all'], 1 / 3, rtol=0.02)
  np.testing.assert_allclose(means['loss/all'], loss, rtol=1e-5)
  assert sum(float(metrics[f'count/{name}']) for name in u_bucket_names()) == BATCH
  np.testing.assert_allclose(metrics['count/uncond'] / BATCH, 0.3, atol=0.01)


def test_uncond_metric_sees_only_dropped_labels():
  images, labels = batch()

  def wrong_when_unconditional(z, logsnr, labels):
    unconditional = (labels == NULL_LABEL)[:, None, None, None]
    return true_eps_denoiser(images)(z, logsnr, labels) + unconditional

  loss, metrics = cfg_loss(wrong_when_unconditional, key=jax.random.key(5), images=images,
                           labels=labels, p_uncond=0.2, null_label=NULL_LABEL)
  means = metric_means(metrics)
  np.testing.assert_allclose(means['loss/uncond'], 1.0, atol=1e-3)
  np.testing.assert_allclose(loss, metrics['count/uncond'] / BATCH, atol=1e-3)


def test_bad_arguments_raise():
  images, labels = batch(8)
  with pytest.raises(ValueError, match='p_uncond'):
    cfg_loss(lambda z, *_: z, key=jax.random.key(0), images=images, labels=labels, p_uncond=1.5,
             null_label=NULL_LABEL)
  with pytest.raises(ValueError, match='labels'):
    cfg_loss(lambda z, *_: z, key=jax.random.key(0), images=images, labels=labels[:4], p_uncond=0.1,
             null_label=NULL_LABEL)


def test_one_adam_step_reduces_the_loss_of_a_tiny_unet():
  # One level (middle attention only): at the first step only the zero-initialised output conv
  # receives gradient, so depth adds compile time and no coverage here.
  model = UNet(base_channels=16, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
               num_classes=NULL_LABEL, num_heads=2, norm_groups=8)
  rng = np.random.default_rng(0)
  grid = np.linspace(-1, 1, 16, dtype=np.float32)
  images = jnp.asarray(np.sin(3 * grid[:, None] + grid[None, :])[None, :, :, None]
                       * rng.uniform(0.5, 1.0, (8, 1, 1, 1)).astype(np.float32))
  labels = jnp.arange(8, dtype=jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0, impl='unsafe_rbg'), images, jnp.zeros(8), labels)
  optimizer = optax.adam(1e-3)

  def loss(params):
    return cfg_loss(functools.partial(model.apply, params), key=jax.random.key(7), images=images,
                    labels=labels, p_uncond=0.2, null_label=NULL_LABEL)[0]

  @jax.jit
  def losses_before_and_after_one_step(params):
    loss_before, grads = jax.value_and_grad(loss)(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return loss_before, loss(optax.apply_updates(params, updates))

  loss_before, loss_after = losses_before_and_after_one_step(params)
  assert float(loss_after) < float(loss_before) - 1e-3, (loss_before, loss_after)
