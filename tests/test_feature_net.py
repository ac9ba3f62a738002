"""Tests of cfg/evaluation/feature_net.py: the shipped Fashion-MNIST network, tiny training."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from cfg import data
from cfg.evaluation import feature_net

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPOSITORY, 'experiments', 'fashion_mnist', 'feature_net')


@pytest.fixture(scope='module')
def data_config():
  return data.default_data_config('fashion_mnist')


@pytest.fixture(scope='module')
def shipped():
  return feature_net.load_feature_net(SHIPPED)


@pytest.fixture(scope='module')
def test_split(data_config):
  return data.load_split(data_config, 'test')


@pytest.fixture(scope='module')
def test_outputs(shipped, test_split):
  return shipped(test_split[0])


def _frechet(features1, features2):
  """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), written out here with scipy as the reference."""
  a, b = np.float64(features1), np.float64(features2)
  sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = linalg.sqrtm(sigma1 @ sigma2).real
  diff = a.mean(axis=0) - b.mean(axis=0)
  return diff @ diff + np.trace(sigma1 + sigma2 - 2 * covmean)


def test_shipped_network_reaches_its_recorded_test_accuracy(shipped, test_split, test_outputs):
  labels = test_split[1]
  accuracy = np.mean(np.argmax(test_outputs[1], axis=-1) == labels)
  with open(os.path.join(SHIPPED, feature_net.INFO_FILE)) as f:
    recorded = json.load(f)
  assert recorded['test_examples'] == len(labels) == 10_000
  assert abs(accuracy - recorded['test_accuracy']) <= 0.005
  assert accuracy >= 0.90
  assert os.path.getsize(os.path.join(SHIPPED, feature_net.INFO_FILE)) < 10_000
  # The committed network, not the reference-statistics caches evaluations write beside it.
  assert sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(SHIPPED)
             for name in names if not name.startswith('reference_')) < 2_000_000


def test_features_and_logits_shapes_ranges_and_batching(shipped, test_split, test_outputs):
  features, logits = test_outputs
  assert features.shape == (10_000, 128) and features.dtype == np.float32
  assert logits.shape == (10_000, 10)
  assert np.all(features >= -0.279)  # SiLU(h) ≥ −0.2785
  # Every feature varies: Σ of the test split is positive definite (a well-posed Fréchet distance).
  eigenvalues = np.linalg.eigvalsh(np.cov(np.float64(features), rowvar=False))
  assert eigenvalues[0] > 1e-7 * eigenvalues[-1]
  images = test_split[0][:150]
  # One direct application of the module is the reference for the chunked (lax.map) path,
  # with a batch size that leaves a remainder; float input in [−1, 1] must agree with uint8.
  direct_features, direct_logits = shipped.network.apply(
      shipped.variables, jnp.asarray(images, jnp.float32) / 127.5 - 1.0, train=False)
  chunked_features, chunked_logits = shipped.features_and_logits(
      images.astype(np.float32) / 127.5 - 1.0, batch_size=64)
  np.testing.assert_allclose(chunked_features, direct_features, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(chunked_logits, direct_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(features[:150], direct_features, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'shape \[N, 28, 28, 1\]'):
    shipped(images[..., 0])


def test_frechet_distance_train_vs_test_is_small_and_noise_vs_test_large(
    shipped, data_config, test_outputs, tmp_path):
  train_images, _ = data.load_split(data_config, 'train', 5000)
  noise = np.random.default_rng(0).integers(0, 256, (5000, 28, 28, 1), dtype=np.uint8)
  train_features, noise_features = shipped(train_images)[0], shipped(noise)[0]
  test_features = test_outputs[0]
  fd_train = _frechet(train_features, test_features)
  fd_noise = _frechet(noise_features, test_features)
  scale = np.trace(np.cov(np.float64(test_features), rowvar=False))
  assert 0 < fd_train < 0.01 * scale < fd_noise
  assert fd_noise > 100 * fd_train

  # reference_stats on a copy, so the test never writes into the repository.
  copy = feature_net.load_feature_net(shutil.copytree(SHIPPED, tmp_path / 'net'))
  stats = feature_net.reference_stats(copy, data_config)
  np.testing.assert_allclose(stats['mu'], np.float64(test_features).mean(axis=0), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(stats['sigma'], np.cov(np.float64(test_features), rowvar=False),
                             rtol=1e-4, atol=1e-4)
  assert stats['mu'].dtype == stats['sigma'].dtype == np.float64
  assert stats['features'].shape == (10_000, 128)
  cached = [name for name in os.listdir(tmp_path / 'net') if name.endswith('.npz')]
  assert cached == ['reference_fashion_mnist_test_all.npz']
  again = feature_net.reference_stats(copy, data_config)
  np.testing.assert_array_equal(again['sigma'], stats['sigma'])


def test_missing_directory_names_the_command_that_creates_it(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError,
                     match=f'python -m cfg.evaluation.feature_net --out={missing}'):
    feature_net.load_feature_net(missing)


def test_random_shifts_are_translations_filled_with_background():
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
  shifted = np.asarray(
      feature_net.random_shifts(jnp.asarray(images), jax.random.key(3), max_shift=2))
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  for image, result in zip(padded, shifted):
    candidates = [image[dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(result, candidate) for candidate in candidates)


def test_tiny_training_run_saves_and_loads_with_identical_outputs(data_config, test_split,
                                                                  tmp_path):
  # 4 steps × 128 = 512 training images.
  trained = feature_net.train_feature_net(data_config, seed=1, steps=4, batch_size=128,
                                          max_shift=1, max_test_examples=500)
  images, labels = test_split[0][:500], test_split[1][:500]
  features, logits = trained(images)
  assert trained.info['test_examples'] == 500
  assert trained.test_accuracy == pytest.approx(np.mean(np.argmax(logits, -1) == labels))

  directory = str(tmp_path / 'tiny')
  feature_net.save_feature_net(trained, directory, provenance={'command': 'test'})
  loaded = feature_net.load_feature_net(directory)
  loaded_features, loaded_logits = loaded(images)
  np.testing.assert_array_equal(loaded_features, features)
  np.testing.assert_array_equal(loaded_logits, logits)
  assert loaded.info == {**trained.info, 'provenance': {'command': 'test'}}

  with pytest.raises(FileExistsError, match='--overwrite'):
    feature_net.save_feature_net(trained, directory)
  feature_net.save_feature_net(trained, directory, overwrite=True)
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('not a network')
  with pytest.raises(FileExistsError, match='not a feature network'):
    feature_net.save_feature_net(trained, str(tmp_path / 'other'), overwrite=True)
  assert (tmp_path / 'other' / 'notes.txt').exists()


def test_command_refuses_an_existing_output_directory_before_training(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'cfg.evaluation.feature_net', f'--out={tmp_path}'],
      cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert 'already exists; pass --overwrite' in result.stderr
