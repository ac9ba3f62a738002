"""Tests for cfg.evaluation.metrics against closed forms and independent re-derivations."""

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial import distance

from cfg.evaluation import metrics


def _random_covariance(rng, dim):
  a = rng.standard_normal((dim, 2 * dim))
  return a @ a.T / (2 * dim) + 0.1 * np.eye(dim)


def _psd_sqrt(matrix):
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T


# ---- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
  var1, var2 = rng.uniform(0.1, 3.0, 32), rng.uniform(0.1, 3.0, 32)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = metrics.frechet_distance(mu1=mu1, sigma1=np.diag(var1), mu2=mu2, sigma2=np.diag(var2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_eigendecomposition_formula_on_random_covariances():
  # tr √(Σ1 Σ2) = tr √(Σ1^½ Σ2 Σ1^½) = Σ √eig, computed without sqrtm.
  rng = np.random.default_rng(1)
  dim = 48
  mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
  sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
  root1 = _psd_sqrt(sigma1)
  tr_covmean = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ sigma2 @ root1)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean
  got = metrics.frechet_distance(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
  assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_from_features_uses_mean_and_unbiased_covariance():
  rng = np.random.default_rng(2)
  features1 = rng.standard_normal((300, 8)) * [1, 2, 3, 4, 1, 1, 1, 1]
  features2 = rng.standard_normal((200, 8)) + 0.5
  mu1, mu2 = features1.mean(0), features2.mean(0)
  sigma1 = (features1 - mu1).T @ (features1 - mu1) / 299
  sigma2 = (features2 - mu2).T @ (features2 - mu2) / 199
  root1 = _psd_sqrt(sigma1)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
              - 2 * np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ sigma2 @ root1))))
  got = metrics.frechet_distance_from_features(features1=features1, features2=features2)
  assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('num, dim', [(500, 64), (200, 256)])  # 200 < 256: a singular covariance
def test_frechet_distance_of_a_set_with_itself_is_zero(num, dim):
  rng = np.random.default_rng(3)
  features = rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim)) * 0.1
  scale = np.trace(np.cov(features, rowvar=False))
  got = metrics.frechet_distance_from_features(features1=features, features2=features)
  assert abs(got) < 1e-7 * scale


def test_frechet_distance_retries_with_eps_when_sqrtm_is_not_finite(monkeypatch):
  rng = np.random.default_rng(4)
  sigma1, sigma2 = _random_covariance(rng, 6), _random_covariance(rng, 6)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  eps = 1e-2  # large enough that the retried value differs visibly from the plain one
  arguments = []
  scipy_sqrtm = linalg.sqrtm

  def sqrtm_failing_once(matrix):
    arguments.append(matrix)
    return np.full_like(matrix, np.nan) if len(arguments) == 1 else scipy_sqrtm(matrix)

  monkeypatch.setattr(metrics.linalg, 'sqrtm', sqrtm_failing_once)
  with pytest.warns(UserWarning, match='not finite'):
    got = metrics.frechet_distance(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2, eps=eps)
  monkeypatch.undo()
  offset = eps * np.eye(6)
  np.testing.assert_allclose(arguments[1], (sigma1 + offset) @ (sigma2 + offset), rtol=1e-12)
  # The retry only changes the cross term; the traces stay those of the original covariances.
  root1 = _psd_sqrt(sigma1 + offset)
  tr_covmean = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ (sigma2 + offset) @ root1)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean
  assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('imaginary, accepted', [(1e-4, True), (1e-2, False)])
def test_frechet_distance_drops_only_small_imaginary_parts(monkeypatch, imaginary, accepted):
  sigma = np.diag([1.0, 4.0])
  real_sqrt = np.diag([1.0, 2.0])
  monkeypatch.setattr(metrics.linalg, 'sqrtm', lambda matrix: real_sqrt + 1j * imaginary * np.eye(2))
  kwargs = dict(mu1=np.zeros(2), sigma1=sigma, mu2=np.ones(2), sigma2=sigma)
  if accepted:
    # ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr Re(covmean) = 2 + 5 + 5 − 2·3.
    assert metrics.frechet_distance(**kwargs) == pytest.approx(6.0, rel=1e-12)
  else:
    with pytest.raises(ValueError, match='imaginary component'):
      metrics.frechet_distance(**kwargs)


def test_frechet_distance_rejects_mismatched_dimensions():
  with pytest.raises(ValueError, match='same feature dimension'):
    metrics.frechet_distance(mu1=np.zeros(3), sigma1=np.eye(3), mu2=np.zeros(4), sigma2=np.eye(4))


# ---- Inception Score ----------------------------------------------------------------------------


@pytest.mark.parametrize('num_classes', [1, 4, 10])
def test_inception_score_of_confident_balanced_predictions_is_the_number_of_classes(num_classes):
  labels = np.tile(np.arange(num_classes), 10 * 3)  # every split holds each class three times
  logits = 1000.0 * np.eye(num_classes)[labels]
  assert metrics.inception_score(logits) == pytest.approx(num_classes, rel=1e-9)


def test_inception_score_of_confident_predictions_is_exp_entropy_of_class_frequencies():
  frequencies = np.array([0.5, 0.25, 0.125, 0.125])
  labels = np.repeat(np.arange(4), (frequencies * 8).astype(int))  # one split = these 8 labels
  logits = 50.0 * np.eye(1008)[labels]
  expected = np.exp(-np.sum(frequencies * np.log(frequencies)))
  assert metrics.inception_score(logits, splits=1) == pytest.approx(expected, rel=1e-9)


def test_inception_score_of_identical_predictions_is_one():
  logits = np.tile(np.random.default_rng(5).standard_normal(20), (40, 1))
  assert metrics.inception_score(logits) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_improved_gan_formula_on_random_logits():
  rng = np.random.default_rng(6)
  logits = 3 * rng.standard_normal((1003, 50))  # 1003 is not a multiple of 10: uneven splits
  probs = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
  scores = []
  for i in range(10):
    part = probs[(i * 1003 // 10):((i + 1) * 1003 // 10)]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  assert metrics.inception_score(logits) == pytest.approx(np.mean(scores), rel=1e-10)


def test_inception_score_rejects_fewer_examples_than_splits():
  with pytest.raises(ValueError, match='splits=10'):
    metrics.inception_score(np.zeros((5, 3)))


# ---- precision / recall -------------------------------------------------------------------------


def _brute_force_precision_recall(real, fake, k):
  def radii(points):
    return np.sort(distance.cdist(points, points), axis=1)[:, k]

  def covered(points, centres, centre_radii):
    return np.mean(np.any(distance.cdist(points, centres) <= centre_radii[None, :], axis=1))

  return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_of_identical_sets_is_one():
  features = np.random.default_rng(7).standard_normal((120, 32))
  got = metrics.precision_recall(real_features=features, fake_features=features.copy(), batch_size=50)
  assert got == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
  rng = np.random.default_rng(8)
  real = rng.standard_normal((100, 16))
  fake = rng.standard_normal((80, 16)) + 100.0
  assert metrics.precision_recall(real_features=real, fake_features=fake) == (0.0, 0.0)


def test_precision_recall_on_a_hand_worked_line():
  # k = 1. Real radii: 1, 1, 1, 8 → balls [−1,1], [0,2], [1,3], [2,18]: fakes 0.5 and 5 are inside, 19
  # and −3 are not. Fake radii: 3.5, 3.5, 4.5, 14 → every real point is inside one of their balls.
  real = np.array([[0.0], [1.0], [2.0], [10.0]])
  fake = np.array([[0.5], [5.0], [19.0], [-3.0]])
  assert metrics.precision_recall(real_features=real, fake_features=fake, k=1) == (0.5, 1.0)


def test_precision_recall_matches_brute_force_on_random_data():
  rng = np.random.default_rng(9)
  real = rng.standard_normal((230, 16))
  fake = rng.standard_normal((170, 16)) + 0.6
  expected = _brute_force_precision_recall(real, fake, k=3)
  assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95  # a case where both are informative
  got = metrics.precision_recall(real_features=real, fake_features=fake, k=3, batch_size=64)
  assert got == pytest.approx(expected, abs=1e-12)
