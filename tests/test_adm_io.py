"""Tests for cfg.evaluation.adm_io: the ADM evaluator's file formats and cached reference statistics."""

import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfg import data
from cfg.evaluation import adm_io
from cfg.evaluation import inception


def _images(num, size=8, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (num, size, size, channels), dtype=np.uint8)


def test_sample_batch_is_positional_arr_0_uint8_and_arr_1_int64(tmp_path):
  images, labels = _images(5), np.array([3, 1, 4, 1, 5], np.int32)
  path = tmp_path / 'samples.npz'
  adm_io.write_sample_batch(path, images, labels)
  assert sorted(zipfile.ZipFile(path).namelist()) == ['arr_0.npy', 'arr_1.npy']
  with np.load(path) as npz:  # what the ADM evaluator and ADM's own sample scripts read and write
    assert npz['arr_0'].dtype == np.uint8 and npz['arr_1'].dtype == np.int64
    np.testing.assert_array_equal(npz['arr_0'], images)
    np.testing.assert_array_equal(npz['arr_1'], labels)
  got_images, got_labels = adm_io.read_sample_batch(path)
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)


def test_unconditional_sample_batch_has_no_labels(tmp_path):
  path = tmp_path / 'samples'  # no .npz suffix: the file keeps exactly this name
  adm_io.write_sample_batch(path, _images(2, channels=1))
  assert path.is_file() and adm_io.read_sample_batch(path)[1] is None


def test_sample_batch_refuses_float_images_and_wrong_labels(tmp_path):
  with pytest.raises(ValueError, match='to_uint8'):
    adm_io.write_sample_batch(tmp_path / 'a.npz', np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match='one integer label per image'):
    adm_io.write_sample_batch(tmp_path / 'a.npz', _images(2), labels=np.zeros(3, np.int64))


def test_to_uint8_rounds_minus_one_one_onto_0_255():
  x = np.array([-1.5, -1.0, -1.0 + 1.4 / 127.5, 0.0, 1.0, 2.0])
  np.testing.assert_array_equal(data.to_uint8(x), [0, 0, 1, 128, 255, 255])


def test_reads_a_reference_batch_in_adm_layout(tmp_path):
  rng = np.random.default_rng(1)
  arrays = {'arr_0': _images(4), 'mu': rng.standard_normal(6), 'sigma': np.eye(6),
            'mu_s': rng.standard_normal(2), 'sigma_s': 2 * np.eye(2)}
  path = tmp_path / 'VIRTUAL_tiny.npz'
  np.savez(path, **arrays)
  batch = adm_io.read_reference_batch(path)
  for field, key in [('images', 'arr_0'), ('mu', 'mu'), ('sigma', 'sigma'), ('mu_spatial', 'mu_s'),
                     ('sigma_spatial', 'sigma_s')]:
    np.testing.assert_array_equal(getattr(batch, field), arrays[key])
  assert adm_io.read_reference_batch(path, load_images=False).images is None


def test_reference_batch_without_statistics_or_images_is_refused(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, mu=np.zeros(3))
  with pytest.raises(ValueError, match='needs mu and sigma, or images as arr_0'):
    adm_io.read_reference_batch(path)


@pytest.mark.parametrize('save', [np.savez, np.savez_compressed])
@pytest.mark.parametrize('batch_size', [1, 3, 7, 100])
def test_streamed_batches_concatenate_to_the_stored_array(tmp_path, save, batch_size):
  images = _images(7, size=5)
  path = tmp_path / 'batch.npz'
  save(path, arr_0=images, arr_1=np.arange(7))
  batches = list(adm_io.iterate_npz_array(path, 'arr_0', batch_size=batch_size))
  assert all(len(batch) <= batch_size for batch in batches)
  np.testing.assert_array_equal(np.concatenate(batches), images)


def test_streaming_a_missing_array_names_the_ones_present(tmp_path):
  path = tmp_path / 'batch.npz'
  np.savez(path, mu=np.zeros(2))
  with pytest.raises(ValueError, match=r"no array 'arr_0'.*\['mu'\]"):
    next(adm_io.iterate_npz_array(path, 'arr_0', batch_size=2))


def _mean_colour(images):
  return images.reshape(len(images), -1, images.shape[-1]).mean(axis=1)


def test_reference_statistics_of_a_split_are_computed_once_and_cached(tmp_path):
  config = data.default_data_config('cifar10')
  cache = tmp_path / 'reference.npz'
  with tfds.testing.mock_data(num_examples=12):
    images, _ = data.load_split(config, 'test', max_examples=10)
    stats = adm_io.reference_statistics(config, split='test', features_fn=_mean_colour,
                                        features_id='mean colour', cache_path=cache, max_examples=10)

  features = _mean_colour(images)
  np.testing.assert_allclose(stats['mu'], features.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats['sigma'], np.cov(features.T), rtol=1e-12)
  np.testing.assert_array_equal(stats['features'], features)

  def must_not_run(images):
    raise AssertionError('recomputed although the cache matches')

  cached = adm_io.reference_statistics(config, split='test', features_fn=must_not_run,
                                       features_id='mean colour', cache_path=cache, max_examples=10)
  np.testing.assert_array_equal(cached['sigma'], stats['sigma'])
  with tfds.testing.mock_data(num_examples=12):
    other = adm_io.reference_statistics(config, split='test', features_fn=lambda x: -_mean_colour(x),
                                        features_id='negated', cache_path=cache, max_examples=10)
  np.testing.assert_allclose(other['mu'], -stats['mu'], rtol=1e-12)


@pytest.fixture(scope='module')
def variables():
  return inception.synthetic_inception_variables()


def test_inception_features_of_a_sample_batch_file_are_streamed_in_batches(tmp_path, variables):
  images = _images(4, size=32)
  path = tmp_path / 'samples.npz'
  adm_io.write_sample_batch(path, images)
  pool3, logits = adm_io.npz_image_features(path, variables, batch_size=2)
  for start in (0, 2):
    expected_pool3, expected_logits = inception.inception_features(variables, images[start:start + 2])
    np.testing.assert_allclose(pool3[start:start + 2], expected_pool3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[start:start + 2], expected_logits, rtol=1e-5, atol=1e-6)

  changed = {'params': dict(variables['params']), 'batch_stats': variables['batch_stats']}
  changed['params']['fc'] = {'kernel': variables['params']['fc']['kernel'].at[0, 0].add(1e-3)}
  assert adm_io.weights_fingerprint(changed) != adm_io.weights_fingerprint(variables)


def test_inception_reference_statistics_use_pool3_of_the_split(tmp_path, variables):
  config = data.default_data_config('cifar10')
  with tfds.testing.mock_data(num_examples=6):
    images, _ = data.load_split(config, 'test', max_examples=4)
    stats = adm_io.inception_reference_statistics(config, split='test', variables=variables,
                                                  cache_path=tmp_path / 'ref.npz', batch_size=2,
                                                  max_examples=4)
  pool3 = np.concatenate([inception.inception_features(variables, images[i:i + 2])[0] for i in (0, 2)])
  np.testing.assert_allclose(stats['features'], pool3, rtol=1e-5, atol=1e-6)
  spatial = np.concatenate([inception.inception_features(variables, images[i:i + 2], spatial=True)[2]
                            for i in (0, 2)]).astype(np.float64)
  np.testing.assert_allclose(stats['mu_spatial'], spatial.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['sigma_spatial'], np.cov(spatial, rowvar=False), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['mu'], pool3.astype(np.float64).mean(0), rtol=1e-5)
  assert stats['sigma'].shape == (inception.POOL3_DIM, inception.POOL3_DIM)
  with np.load(tmp_path / 'ref.npz') as cached:
    assert int(cached['num_images']) == 4


@pytest.fixture(scope='module')
def reference_images_and_features():
  """Six 32×32 images and their (pool3, logits, spatial) through the Inception port (synthetic weights)."""
  images = _images(6, size=32, seed=7)
  variables = inception.synthetic_inception_variables(seed=0)
  features = inception.compute_features(variables, [images[:3], images[3:]], batch_size=3,
                                        spatial=True)
  return images, variables, features


def test_reference_batch_of_images_only_gets_fid_and_sfid_statistics_and_pr_features(
    tmp_path, reference_images_and_features):
  images, variables, (pool3, _, spatial) = reference_images_and_features
  path = tmp_path / 'images_only.npz'
  adm_io.write_sample_batch(path, images)  # a sample batch is a valid ADM reference batch
  stats = adm_io.reference_batch_statistics(path, variables, batch_size=3)
  assert stats['features'].shape == (6, inception.POOL3_DIM)
  assert stats['mu_spatial'].shape == (inception.SPATIAL_DIM,)
  np.testing.assert_allclose(stats['features'], pool3, rtol=1e-6, atol=1e-6)
  for name, features in [('', pool3), ('_spatial', spatial)]:
    features = features.astype(np.float64)
    np.testing.assert_allclose(stats[f'mu{name}'], features.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats[f'sigma{name}'], np.cov(features, rowvar=False), rtol=1e-4,
                               atol=1e-9)


def test_reference_batch_statistics_are_read_as_stored_when_present(tmp_path,
                                                                    reference_images_and_features):
  images, variables, (pool3, _, spatial) = reference_images_and_features
  rng = np.random.default_rng(8)
  stored = {'mu': rng.standard_normal(2048), 'sigma': np.eye(2048)}
  path = tmp_path / 'mu_sigma_and_images.npz'
  np.savez(path, arr_0=images, **stored)
  stats = adm_io.reference_batch_statistics(path, variables, batch_size=3)
  np.testing.assert_array_equal(stats['mu'], stored['mu'])  # as the ADM evaluator: stored mu, sigma
  np.testing.assert_array_equal(stats['sigma'], stored['sigma'])
  np.testing.assert_allclose(stats['mu_spatial'], spatial.astype(np.float64).mean(0), rtol=1e-5,
                             atol=1e-7)  # no mu_s stored: computed from the images
  np.testing.assert_allclose(stats['features'], pool3, rtol=1e-6, atol=1e-6)

  path = tmp_path / 'statistics_only.npz'
  np.savez(path, mu_s=np.ones(3), sigma_s=np.eye(3), **stored)
  stats = adm_io.reference_batch_statistics(path, variables)
  assert stats['features'] is None  # no images: no precision / recall
  np.testing.assert_array_equal(stats['mu_spatial'], np.ones(3))
