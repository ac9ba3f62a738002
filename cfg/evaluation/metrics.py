"""Sample-quality metrics over feature vectors: Fréchet distance, Inception Score, precision / recall.

Conventions follow the reference implementations that published numbers come from (paper §7): the TTUR /
pytorch-fid / ADM-evaluator Fréchet distance (float64 on the host, scipy sqrtm, ε·I retry, imaginary part
dropped only when the diagonal's is below 1e-3), the improved-GAN Inception Score (10 contiguous splits),
and the Kynkäänniemi et al. k-NN precision / recall as in the ADM evaluator (k = 3, squared Euclidean
distances, a point is covered when its distance is ≤ some reference point's k-th-neighbour distance).
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg
from scipy import special


def feature_statistics(features):
  """(μ, Σ) = (mean, np.cov(rowvar=False)) of features [N, D], in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'Expected features of shape [N ≥ 2, D], got {features.shape}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(*, mu1, sigma1, mu2, sigma2, eps=1e-6):
  """d² = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2), float64, scipy sqrtm.

  If √(Σ1 Σ2) is not finite it is recomputed from (Σ1 + ε I)(Σ2 + ε I); a complex result is accepted
  (real part kept) only when the imaginary parts of its diagonal are within 1e-3 of 0.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, np.float64)) for sigma in (sigma1, sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'Mismatched statistics: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, '
                     f'sigma2 {sigma2.shape}; both sets need the same feature dimension D ([D], [D, D]).')
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    warnings.warn(f'Fréchet distance: sqrtm(Σ1 Σ2) is not finite (near-singular product); adding {eps}·I '
                  'to both covariances.')
    offset = eps * np.eye(sigma1.shape[0])
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'Fréchet distance: sqrtm(Σ1 Σ2) has an imaginary component of up to '
                       f'{np.max(np.abs(covmean.imag)):.3g}; the covariances are likely degenerate '
                       '(too few samples for the feature dimension).')
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_from_features(*, features1, features2):
  """Fréchet distance between Gaussians fitted to two feature sets [N1, D], [N2, D]."""
  mu1, sigma1 = feature_statistics(features1)
  mu2, sigma2 = feature_statistics(features2)
  return frechet_distance(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)


def inception_score(logits, *, splits=10):
  """IS = mean over splits of exp(E_x KL(p(y|x) ‖ p(y))), p(y|x) = softmax(logits), p(y) = split mean.

  Splits are the contiguous slices [i N / splits, (i + 1) N / splits) of improved-GAN (for N = 50,000
  the ADM evaluator's 5,000-image splits). Pass the bias-free Inception logits for comparable numbers.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < splits:
    raise ValueError(f'Expected logits of shape [N ≥ splits={splits}, classes], got {logits.shape}.')
  log_p = logits - special.logsumexp(logits, axis=1, keepdims=True)
  num = log_p.shape[0]
  scores = []
  for i in range(splits):
    part = log_p[i * num // splits:(i + 1) * num // splits]
    log_marginal = special.logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores))


# ---- precision / recall (Kynkäänniemi et al. 2019) ----------------------------------------------


def _squared_distances(a, b):
  """‖a_i − b_j‖² = ‖a_i‖² − 2 a_i·b_j + ‖b_j‖², clipped at 0."""
  dots = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(a * a, 1)[:, None] - 2 * dots + jnp.sum(b * b, 1)[None, :], 0.0)


@functools.partial(jax.jit, static_argnames='k')
def _kth_neighbour_squared_distance(rows, features, k):
  # Column 0 of the sorted row is the point itself, so column k is its k-th neighbour.
  smallest = -jax.lax.top_k(-_squared_distances(rows, features), k + 1)[0]
  return smallest[:, k]


@jax.jit
def _inside_any_ball(rows, centres, radii_squared):
  return jnp.any(_squared_distances(rows, centres) <= radii_squared[None, :], axis=1)


def _map_row_blocks(fn, rows, *args, batch_size):
  """Concatenates fn(block, *args) over row blocks of rows, the last block padded to batch_size."""
  batch_size = min(batch_size, rows.shape[0])
  outputs = []
  for start in range(0, rows.shape[0], batch_size):
    block = rows[start:start + batch_size]
    count = block.shape[0]
    block = np.pad(block, ((0, batch_size - count), (0, 0)))
    outputs.append(np.asarray(fn(block, *args))[:count])
  return np.concatenate(outputs)


def manifold_radii(features, *, k=3, batch_size=1000):
  """r_i² = squared distance from features[i] to its k-th nearest other point of the same set."""
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[0] <= k:
    raise ValueError(f'Expected features of shape [N > k={k}, D], got {features.shape}.')
  return _map_row_blocks(functools.partial(_kth_neighbour_squared_distance, k=k), features,
                         jnp.asarray(features), batch_size=batch_size)


def coverage(*, points, centres, radii_squared, batch_size=1000):
  """Share of points within the ball of at least one centre: mean_j 1[∃i: ‖p_j − c_i‖² ≤ r_i²]."""
  points = np.asarray(points, np.float32)
  inside = _map_row_blocks(_inside_any_ball, points, jnp.asarray(centres, jnp.float32),
                           jnp.asarray(radii_squared, jnp.float32), batch_size=batch_size)
  return float(np.mean(inside))


def precision_recall(*, real_features, fake_features, k=3, batch_size=1000):
  """(precision, recall) = (share of fakes in the real k-NN manifold, share of reals in the fake one).

  Distances are computed in [batch_size, N] blocks, so 50k × 50k sets never build an N × N matrix.
  """
  real_features = np.asarray(real_features, np.float32)
  fake_features = np.asarray(fake_features, np.float32)
  if real_features.shape[1:] != fake_features.shape[1:]:
    raise ValueError(f'Real features {real_features.shape} and fake features {fake_features.shape} '
                     'need the same feature dimension.')
  real_radii = manifold_radii(real_features, k=k, batch_size=batch_size)
  fake_radii = manifold_radii(fake_features, k=k, batch_size=batch_size)
  precision = coverage(points=fake_features, centres=real_features, radii_squared=real_radii,
                       batch_size=batch_size)
  recall = coverage(points=real_features, centres=fake_features, radii_squared=fake_radii,
                    batch_size=batch_size)
  return precision, recall
