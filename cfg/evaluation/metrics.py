"""Sample-quality metrics over feature vectors: Fréchet distance, Inception Score, precision / recall, PRDC.

Conventions follow the reference implementations that published numbers come from (paper §7): the TTUR /
pytorch-fid / ADM-evaluator Fréchet distance (float64 on the host, scipy sqrtm, ε·I retry, imaginary part
dropped only when the diagonal's is below 1e-3), the improved-GAN Inception Score (10 contiguous splits),
and the Kynkäänniemi et al. k-NN precision / recall as in the ADM evaluator (k = 3, squared Euclidean
distances, a point is covered when its distance is ≤ some reference point's k-th-neighbour distance),
next to Naeem et al.'s precision / recall / density / coverage (k = 5, strict <, as their code).
For small sample counts: a basic-bootstrap interval for the Fréchet distance and FD∞ (Chong & Forsyth
2020), both with the reference statistics held fixed.
"""

import functools
from typing import NamedTuple
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


def _feature_pair(real_features, fake_features):
  real_features = np.asarray(real_features, np.float32)
  fake_features = np.asarray(fake_features, np.float32)
  if real_features.shape[1:] != fake_features.shape[1:]:
    raise ValueError(f'Real features {real_features.shape} and fake features {fake_features.shape} '
                     'need the same feature dimension.')
  return real_features, fake_features


def precision_recall(*, real_features, fake_features, k=3, batch_size=1000, real_radii=None):
  """(precision, recall) = (share of fakes in the real k-NN manifold, share of reals in the fake one).

  Distances are computed in [batch_size, N] blocks, so 50k × 50k sets never build an N × N matrix.
  real_radii: `manifold_radii(real_features, k=k)` when already known (a fixed reference set).
  """
  real_features, fake_features = _feature_pair(real_features, fake_features)
  if real_radii is None:
    real_radii = manifold_radii(real_features, k=k, batch_size=batch_size)
  fake_radii = manifold_radii(fake_features, k=k, batch_size=batch_size)
  precision = coverage(points=fake_features, centres=real_features, radii_squared=real_radii,
                       batch_size=batch_size)
  recall = coverage(points=real_features, centres=fake_features, radii_squared=fake_radii,
                    batch_size=batch_size)
  return precision, recall


# ---- precision / recall / density / coverage (Naeem et al. 2020) --------------------------------


@jax.jit
def _count_strictly_inside(rows, centres, radii_squared):
  return jnp.sum(_squared_distances(rows, centres) < radii_squared[None, :], axis=1)


@jax.jit
def _nearest_squared_distance(rows, points):
  return jnp.min(_squared_distances(rows, points), axis=1)


def prdc(*, real_features, fake_features, k=5, batch_size=1000, real_radii=None):
  """{precision, recall, density, coverage} of Naeem et al. (2020), as clovaai/generative-evaluation-prdc.

  With R_k(x) the distance from x to its k-th nearest other point of its own set (reals X_i, fakes Y_j):
    precision = mean_j 1[∃i: ‖Y_j − X_i‖ < R_k(X_i)]      recall   = mean_i 1[∃j: ‖X_i − Y_j‖ < R_k(Y_j)]
    density   = mean_j (1/k) Σ_i 1[‖Y_j − X_i‖ < R_k(X_i)]  coverage = mean_i 1[min_j ‖X_i − Y_j‖ < R_k(X_i)]
  Comparisons are strict, as in the authors' code (the ADM-style `precision_recall` uses ≤ and k = 3).
  Density is not bounded by 1; coverage uses only the real radii, so it ignores fake outliers.
  real_radii: `manifold_radii(real_features, k=k)` when already known (a fixed reference set).
  """
  real_features, fake_features = _feature_pair(real_features, fake_features)
  if real_radii is None:
    real_radii = manifold_radii(real_features, k=k, batch_size=batch_size)
  fake_radii = manifold_radii(fake_features, k=k, batch_size=batch_size)
  reals, fakes = jnp.asarray(real_features), jnp.asarray(fake_features)
  inside_real_balls = _map_row_blocks(_count_strictly_inside, fake_features, reals,
                                      jnp.asarray(real_radii), batch_size=batch_size)
  inside_fake_balls = _map_row_blocks(_count_strictly_inside, real_features, fakes,
                                      jnp.asarray(fake_radii), batch_size=batch_size)
  nearest_fake = _map_row_blocks(_nearest_squared_distance, real_features, fakes,
                                 batch_size=batch_size)
  return {'precision': float(np.mean(inside_real_balls > 0)),
          'recall': float(np.mean(inside_fake_balls > 0)),
          'density': float(np.mean(inside_real_balls) / k),
          'coverage': float(np.mean(nearest_fake < real_radii))}


# ---- small-sample honesty: bootstrap intervals and FD∞ ------------------------------------------
# A Fréchet distance from N samples is biased upward by ≈ c/N, with c depending on the sample
# distribution (so on w): distances from small N are not comparable across settings. Both tools
# below hold the reference statistics fixed and resample or subsample only the sample features.


class FrechetInterval(NamedTuple):
  """A Fréchet distance, its basic-bootstrap interval at `confidence`, and the bootstrap replicates."""
  fd: float
  low: float
  high: float
  confidence: float
  replicates: np.ndarray


class FrechetInfinity(NamedTuple):
  """FD∞ (the fit's intercept at 1/N = 0), its slope in 1/N, and the (N, FD_N) points it was fitted to."""
  fd_infinity: float
  slope: float
  subset_sizes: np.ndarray
  fds: np.ndarray


def _psd_sqrt(matrix):
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T


def _sandwich(root, covariances):
  """R Σ R for a stack of symmetric Σ [..., D, D] as two flat matrix products: (Σ R)ᵀ R = R Σ R.

  (numpy's stacked matmul runs one small product per matrix, ~30× slower here for 200 × 128².)
  """
  dim = root.shape[0]
  right = (covariances.reshape(-1, dim) @ root).reshape(covariances.shape)
  return (np.swapaxes(right, -1, -2).reshape(-1, dim) @ root).reshape(covariances.shape)


def _frechet_to_fixed_reference(means, covariances, *, mu_ref, sigma_ref, root_ref):
  """d² per leading index; tr √(Σ Σ_ref) = Σ √eig(Σ_ref^½ Σ Σ_ref^½) (both PSD), so no sqrtm."""
  eigenvalues = np.linalg.eigvalsh(_sandwich(root_ref, covariances))
  trace_covmean = np.sum(np.sqrt(np.maximum(eigenvalues, 0)), axis=-1)
  diff = means - mu_ref
  return (np.sum(diff * diff, axis=-1) + np.trace(covariances, axis1=-2, axis2=-1)
          + np.trace(sigma_ref) - 2 * trace_covmean)


def _reference(features, mu_ref, sigma_ref):
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 3:
    raise ValueError(f'Expected features of shape [N ≥ 3, D], got {features.shape}.')
  mu_ref = np.asarray(mu_ref, np.float64)
  sigma_ref = np.asarray(sigma_ref, np.float64)
  if mu_ref.shape != features.shape[1:] or sigma_ref.shape != features.shape[1:] * 2:
    raise ValueError(f'Reference statistics mu {mu_ref.shape}, sigma {sigma_ref.shape} do not fit '
                     f'features {features.shape}; both need the feature dimension D.')
  # Σ_ref^½ serves only the D × D form, which N ≤ D never takes.
  root_ref = _psd_sqrt(sigma_ref) if features.shape[0] > features.shape[1] else None
  return features, mu_ref, sigma_ref, root_ref


def _frechet_from_gram(*, mean_offsets, trace_sample, grams, trace_ref):
  """d² per leading index from the N × N Gram form: with Σ = Yᵀ Y (Y [N, D]), the non-zero eigenvalues
  of Σ_ref^½ Σ Σ_ref^½ are those of G = Y Σ_ref Yᵀ, so tr √(Σ Σ_ref) = Σ √eig(G) at O(N³), not O(D³).

  G has rank < N (Y's rows are centred); its zero eigenvalues come out as ±1e-15-sized rounding noise,
  whose square roots would add ~3e-8 each, so eigenvalues below 1e-12 of the largest count as 0.
  """
  eigenvalues = np.linalg.eigvalsh(grams)
  largest = np.max(eigenvalues, axis=-1, keepdims=True)
  eigenvalues = np.where(eigenvalues > 1e-12 * largest, eigenvalues, 0.0)
  trace_covmean = np.sum(np.sqrt(eigenvalues), axis=-1)
  return np.sum(mean_offsets ** 2, axis=-1) + trace_sample + trace_ref - 2 * trace_covmean


def _fd_of_rows(rows, *, mu_ref, sigma_ref, root_ref):
  """FD of the Gaussian fitted to rows [N, D] (np.cov) to the fixed reference; Gram form when N ≤ D."""
  num, dim = rows.shape
  mean = rows.mean(axis=0)
  if num > dim:
    return float(_frechet_to_fixed_reference(mean, np.cov(rows, rowvar=False), mu_ref=mu_ref,
                                             sigma_ref=sigma_ref, root_ref=root_ref))
  scaled = (rows - mean) / np.sqrt(num - 1)
  return float(_frechet_from_gram(mean_offsets=mean - mu_ref, trace_sample=np.sum(scaled ** 2),
                                  grams=scaled @ sigma_ref @ scaled.T, trace_ref=np.trace(sigma_ref)))


def frechet_distance_to_reference(*, features, mu_ref, sigma_ref):
  """FD of features [N, D] to reference statistics: `frechet_distance` (scipy sqrtm, the published
  convention) when N > D; for N ≤ D, where Σ is singular and sqrtm(Σ Σ_ref) both slow and inexact,
  the same distance in the N × N Gram form (`_frechet_from_gram`)."""
  features = np.asarray(features, np.float64)
  if features.ndim == 2 and features.shape[0] > features.shape[1]:
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu1=mu, sigma1=sigma, mu2=mu_ref, sigma2=sigma_ref)
  features, mu_ref, sigma_ref, _ = _reference(features, mu_ref, sigma_ref)
  return _fd_of_rows(features, mu_ref=mu_ref, sigma_ref=sigma_ref, root_ref=None)


def _bootstrap_replicates_gram(centred, counts, *, mean, mu_ref, sigma_ref):
  """Replicates for N ≤ D: Σ*_b = Y_bᵀ Y_b with Y_b = diag(√c_b)(X − 1 μ*_bᵀ)/√(N − 1), X the centred rows,
  μ*_b = c_bᵀ X / N; G_b = diag(√c_b)(M − a 1ᵀ − 1 aᵀ + (c_bᵀ M c_b / N²) 1 1ᵀ) diag(√c_b)/(N − 1) with
  M = X Σ_ref Xᵀ and a = M c_b / N."""
  num = centred.shape[0]
  gram_all = centred @ sigma_ref @ centred.T
  means = counts @ centred / num
  a = counts @ gram_all / num  # [B, N] (M is symmetric)
  quad = np.sum(a * counts, axis=1) / num  # c_bᵀ M c_b / N²
  inner = gram_all[None] - a[:, :, None] - a[:, None, :] + quad[:, None, None]
  root = np.sqrt(counts)
  grams = root[:, :, None] * inner * root[:, None, :] / (num - 1)
  norms = np.sum(centred * centred, axis=1)
  trace_sample = (counts @ norms - num * np.sum(means * means, axis=1)) / (num - 1)
  return _frechet_from_gram(mean_offsets=mean + means - mu_ref, trace_sample=trace_sample, grams=grams,
                            trace_ref=np.trace(sigma_ref))


def _bootstrap_replicates_covariance(centred, counts, *, mean, mu_ref, sigma_ref, root_ref, max_elements):
  """Replicates for N > D from the resampled D × D covariances."""
  num, dim = centred.shape
  rows_per_block = int(max(1, max_elements // (counts.shape[0] * dim)))
  means = counts @ centred / num
  second = np.zeros((counts.shape[0], dim, dim))
  for row in range(0, num, rows_per_block):
    block = centred[row:row + rows_per_block]
    # Σ_i c_bi x_i x_iᵀ for every b as one flat product [(b·D), rows] @ [rows, D].
    weighted = np.swapaxes(counts[:, row:row + rows_per_block, None] * block, 1, 2)
    second += (np.ascontiguousarray(weighted).reshape(-1, block.shape[0]) @ block).reshape(second.shape)
  # np.cov of the resampled rows: (Σ_i c_i x_i x_iᵀ − N μ* μ*ᵀ) / (N − 1).
  covariances = (second - num * means[:, :, None] * means[:, None, :]) / (num - 1)
  return _frechet_to_fixed_reference(mean + means, covariances, mu_ref=mu_ref, sigma_ref=sigma_ref,
                                     root_ref=root_ref)


def frechet_distance_bootstrap(*, features, mu_ref, sigma_ref, num_resamples=200, confidence=0.95,
                               seed=0, max_elements=1 << 24):
  """FD of features [N, D] to the fixed reference (μ_ref, Σ_ref), with a basic-bootstrap interval.

  Replicates d*_b are the FD of N rows drawn with replacement (numpy seed `seed`). The interval is
  [2 d − q_{(1+c)/2}(d*), 2 d − q_{(1−c)/2}(d*)] (the "basic" bootstrap, lower end clipped at 0):
  it reflects the replicates' spread about d, so it corrects the ≈ c/N upward bias of d to first
  order, where the plain percentile interval [q_lo, q_hi] sits above d and misses the true distance.
  Where the bias exceeds the spread (few samples in many dimensions) the interval lies wholly below d.
  Costs num_resamples covariance products of N·D² (rows summed in blocks of ≤ max_elements numbers);
  for N ≤ D each replicate is an N × N eigenproblem instead of a D × D one (`_frechet_from_gram`).
  """
  features, mu_ref, sigma_ref, root_ref = _reference(features, mu_ref, sigma_ref)
  num, dim = features.shape
  mean = features.mean(axis=0)
  centred = features - mean  # covariances are shift-invariant; centring keeps float64 sums exact
  fd = _fd_of_rows(features, mu_ref=mu_ref, sigma_ref=sigma_ref, root_ref=root_ref)
  rng = np.random.default_rng(seed)
  chunk = int(np.clip(max_elements // (num * dim), 1, num_resamples))
  replicates = []
  for start in range(0, num_resamples, chunk):
    counts = rng.multinomial(num, np.full(num, 1.0 / num), size=min(chunk, num_resamples - start))
    if num <= dim:
      replicates.append(_bootstrap_replicates_gram(centred, counts.astype(np.float64), mean=mean,
                                                   mu_ref=mu_ref, sigma_ref=sigma_ref))
    else:
      replicates.append(_bootstrap_replicates_covariance(
          centred, counts, mean=mean, mu_ref=mu_ref, sigma_ref=sigma_ref, root_ref=root_ref,
          max_elements=max_elements))
  replicates = np.concatenate(replicates)
  q_low, q_high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
  return FrechetInterval(fd=fd, low=float(max(2 * fd - q_high, 0.0)), high=float(2 * fd - q_low),
                         confidence=confidence, replicates=replicates)


def frechet_distance_infinity(*, features, mu_ref, sigma_ref, subset_sizes=None, num_points=15,
                              seed=0):
  """FD∞ (Chong & Forsyth 2020): FD_N at several N, least-squares FD_N = FD∞ + slope / N, intercept.

  As the authors' code: each FD_N uses the first N rows of a fresh shuffle (numpy seed `seed`) and the
  sizes default to num_points values evenly spaced from N_total / 10 to N_total (their 5k…50k).
  """
  features, mu_ref, sigma_ref, root_ref = _reference(features, mu_ref, sigma_ref)
  num = features.shape[0]
  if subset_sizes is None:
    subset_sizes = np.linspace(max(num // 10, 3), num, num_points)
  subset_sizes = np.unique(np.asarray(subset_sizes, np.int64))
  if subset_sizes.size < 2 or subset_sizes[0] < 3 or subset_sizes[-1] > num:
    raise ValueError(f'FD∞ needs ≥ 2 distinct subset sizes in [3, N={num}], got {subset_sizes}.')
  rng = np.random.default_rng(seed)
  fds = []
  for size in subset_sizes:
    fds.append(_fd_of_rows(features[rng.permutation(num)[:size]], mu_ref=mu_ref, sigma_ref=sigma_ref,
                           root_ref=root_ref))
  fds = np.asarray(fds, np.float64)
  slope, intercept = np.polyfit(1.0 / subset_sizes, fds, 1)
  return FrechetInfinity(fd_infinity=float(intercept), slope=float(slope), subset_sizes=subset_sizes,
                         fds=fds)
