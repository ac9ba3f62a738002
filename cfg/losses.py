"""The training loss of classifier-free guidance (paper Algorithm 1).

One network learns both ε_θ(z, λ, c) and ε_θ(z, λ, ∅): each label is replaced by the null
label with probability p_uncond, λ is drawn from the truncated cosine, and the loss is the plain
(unweighted) ε-MSE. All randomness for the whole batch comes from one key through jax.random,
so under jit the draws do not depend on how the batch is sharded.

Metrics come as sums and counts so that they can be added over steps or devices and divided
at the end (`metric_means`): the loss per quarter of u (u = 0 is the clean end λ_max, u = 1 the
noise end λ_min) and on the examples whose label was dropped.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from cfg.diffusion import LOGSNR_MAX, LOGSNR_MIN, diffuse, sample_logsnr, u_from_logsnr

NUM_U_BUCKETS = 4

Array = jax.Array
Denoiser = Callable[[Array, Array, Array], Array]  # ε̂(z, λ, labels), dropout rng bound


def drop_labels(key: Array, labels: Array, *, p_uncond: ArrayLike, null_label: int) -> tuple[Array, Array]:
  """c ← ∅ with probability p_uncond, independently per example; returns (labels, dropped)."""
  dropped = jax.random.bernoulli(key, p_uncond, labels.shape)
  return jnp.where(dropped, jnp.asarray(null_label, labels.dtype), labels), dropped


def u_bucket_names(num_buckets: int = NUM_U_BUCKETS) -> list[str]:
  """Names 'u0-25', 'u25-50', … of the u-quantile buckets (in percent of u)."""
  edges = [round(100 * i / num_buckets) for i in range(num_buckets + 1)]
  return [f'u{lo}-{hi}' for lo, hi in zip(edges[:-1], edges[1:])]


def sum_and_count_metrics(per_example_loss: Array, *, u: Array, dropped: Array,
                          num_buckets: int = NUM_U_BUCKETS) -> dict[str, Array]:
  """{'loss_sum/<group>': Σ loss, 'count/<group>': n} for all, each u bucket and dropped labels."""
  bucket = jnp.clip(jnp.floor(u * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
  groups = {'all': jnp.ones_like(dropped), 'uncond': dropped}
  for index, name in enumerate(u_bucket_names(num_buckets)):
    groups[name] = bucket == index
  metrics = {}
  for name, member in groups.items():
    member = member.astype(jnp.float32)
    metrics[f'loss_sum/{name}'] = jnp.sum(per_example_loss * member)
    metrics[f'count/{name}'] = jnp.sum(member)
  return metrics


def metric_means(metrics: dict[str, Array]) -> dict[str, Array]:
  """{'loss/<group>': loss_sum/<group> / max(count/<group>, 1)} from (possibly accumulated) sums."""
  prefix = 'loss_sum/'
  groups = [name[len(prefix):] for name in metrics if name.startswith(prefix)]
  return {f'loss/{group}': metrics[prefix + group] / jnp.maximum(metrics[f'count/{group}'], 1.0)
          for group in groups}


def cfg_loss(denoise: Denoiser, *, key: Array, images: Array, labels: Array, p_uncond: ArrayLike,
             null_label: int, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
             num_buckets: int = NUM_U_BUCKETS) -> tuple[Array, dict[str, Array]]:
  """L = mean over batch and elements of (ε_θ(α_λ x + σ_λ ε, λ, c') − ε)², c' = ∅ w.p. p_uncond.

  `denoise(z, logsnr, labels) -> eps` is the network with its dropout rng already bound.
  Returns (loss, metrics); metrics holds 'loss' and the sums/counts of `sum_and_count_metrics`.
  """
  if images.ndim < 2 or labels.shape != images.shape[:1]:
    raise ValueError(f'need images [B, ...] and labels [B]; got images {images.shape}, '
                     f'labels {labels.shape}.')
  if isinstance(p_uncond, (int, float)) and not 0.0 <= p_uncond <= 1.0:
    raise ValueError(f'p_uncond is a probability and must lie in [0, 1]; got {p_uncond}.')
  draws = training_draws(key=key, images=images, labels=labels, p_uncond=p_uncond, null_label=null_label,
                         logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  return loss_from_draws(denoise, draws, logsnr_min=logsnr_min, logsnr_max=logsnr_max,
                         num_buckets=num_buckets)


def training_draws(*, key: Array, images: Array, labels: Array, p_uncond: ArrayLike, null_label: int,
                   logsnr_min: float, logsnr_max: float) -> dict[str, Array]:
  """{z, logsnr, labels (some ∅), eps, dropped} of a batch: Algorithm 1's random draws, all from `key`.

  Per-example arrays, so a batch's draws can be split into micro-batches (gradient accumulation).
  """
  key_labels, key_logsnr, key_eps = jax.random.split(key, 3)
  labels, dropped = drop_labels(key_labels, labels, p_uncond=p_uncond, null_label=null_label)
  logsnr = sample_logsnr(key_logsnr, labels.shape, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  images = images.astype(jnp.float32)
  eps = jax.random.normal(key_eps, images.shape, jnp.float32)
  z = diffuse(x=images, eps=eps, logsnr=logsnr)
  return {'z': z, 'logsnr': logsnr, 'labels': labels, 'eps': eps, 'dropped': dropped}


def loss_from_draws(denoise: Denoiser, draws: dict[str, Array], *, logsnr_min: float, logsnr_max: float,
                    num_buckets: int = NUM_U_BUCKETS) -> tuple[Array, dict[str, Array]]:
  """(mean ε-MSE, metrics) of `training_draws` (or a micro-batch of them)."""
  eps = draws['eps']
  eps_hat = denoise(draws['z'], draws['logsnr'], draws['labels']).astype(jnp.float32)
  per_example_loss = jnp.mean(jnp.square(eps_hat - eps), axis=tuple(range(1, eps.ndim)))
  loss = jnp.mean(per_example_loss)
  u = u_from_logsnr(draws['logsnr'], logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  metrics = sum_and_count_metrics(per_example_loss, u=u, dropped=draws['dropped'], num_buckets=num_buckets)
  metrics = {'loss': loss, **metrics}
  return loss, metrics
