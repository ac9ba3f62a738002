"""Tests for cfg/data.py: IDX reading, the (seed, step) stream, sharding, resizing, tfds paths."""

import gzip
import os
import socket
import struct

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cfg import data

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
# Fashion-MNIST README (github.com/zalandoresearch/fashion-mnist): first train labels, 6000 / 1000
# examples per class; the train pixel mean 0.2860 and std 0.3530 are the usual normalisation constants.
FIRST_TRAIN_LABELS = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # 9 = 'Ankle boot'

TINY_SIZE = 10  # examples in the hand-written IDX fixture


def tiny_image(index):
  """Fixture image `index`: pixel[r, c] = 10·index + c, so min = 10·index and flips are visible."""
  return np.broadcast_to(10 * index + np.arange(28, dtype=np.uint8), (28, 28))[..., None]


def write_idx(folder, prefix, images, labels):
  with gzip.open(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'), 'wb') as f:
    f.write(struct.pack('>IIII', 0x803, len(images), 28, 28) + np.asarray(images).tobytes())
  with gzip.open(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'), 'wb') as f:
    f.write(struct.pack('>II', 0x801, len(labels)) + np.asarray(labels, np.uint8).tobytes())


@pytest.fixture(name='tiny_config')
def fixture_tiny_config(tmp_path):
  images = np.stack([tiny_image(i)[..., 0] for i in range(TINY_SIZE)])
  write_idx(tmp_path, 'train', images, np.arange(TINY_SIZE))
  write_idx(tmp_path, 't10k', images[:3], np.arange(3))
  config = data.default_data_config('fashion_mnist')
  config.fashion_mnist_dir = str(tmp_path)
  return config


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def indices_of(batch):
  """Recovers fixture indices from images (min pixel = 10·index, whether flipped or not)."""
  pixels = np.round((batch['images'] + 1) * 127.5)
  return (pixels.min(axis=(1, 2, 3)) / 10).astype(int)


# ------------------------------------------------------------------ real Fashion-MNIST

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason='apt-get install -y dataset-fashion-mnist')


@needs_fashion_mnist
def test_real_fashion_mnist_matches_published_facts():
  config = data.default_data_config('fashion_mnist')
  train_images, train_labels = data.load_split(config, 'train')
  test_images, test_labels = data.load_split(config, 'test')
  assert train_images.shape == (60000, 28, 28, 1) and train_images.dtype == np.uint8
  assert test_images.shape == (10000, 28, 28, 1) and test_labels.dtype == np.int32
  assert train_labels[:10].tolist() == FIRST_TRAIN_LABELS
  assert np.bincount(train_labels).tolist() == [6000] * 10
  assert np.bincount(test_labels).tolist() == [1000] * 10
  histogram = np.bincount(train_images.ravel(), minlength=256) / train_images.size
  values = np.arange(256) / 255
  mean = histogram @ values
  std = np.sqrt(histogram @ (values - mean)**2)
  assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4


@needs_fashion_mnist
def test_real_fashion_mnist_batches():
  config = data.default_data_config('fashion_mnist')
  batch = next(data.train_batches(config, global_batch_size=256, seed=0))
  assert batch['images'].shape == (256, 28, 28, 1) and batch['images'].dtype == np.float32
  assert batch['images'].min() == -1.0 and batch['images'].max() == 1.0
  assert batch['labels'].dtype == np.int32 and set(batch['labels']) <= set(range(10))
  assert data.image_shape(config) == (28, 28, 1) and data.num_classes(config) == 10


# ------------------------------------------------------------------ the stream, on a tiny IDX fixture


def test_idx_reader_and_model_range(tiny_config):
  images, labels = data.load_split(tiny_config, 'train')
  np.testing.assert_array_equal(images, np.stack([tiny_image(i) for i in range(TINY_SIZE)]))
  np.testing.assert_array_equal(labels, np.arange(TINY_SIZE))
  batch = next(data.train_batches(tiny_config, global_batch_size=4, seed=3))
  expected = np.stack([tiny_image(i) for i in batch['labels']]) / 127.5 - 1
  np.testing.assert_allclose(batch['images'], expected, atol=1e-6)


def test_each_epoch_is_a_fresh_permutation(tiny_config):
  # 10 examples in batches of 4: epochs end mid-batch; the stream just continues.
  batches = take(data.train_batches(tiny_config, global_batch_size=4, seed=0), 5)
  order = np.concatenate([b['labels'] for b in batches])
  np.testing.assert_array_equal(np.concatenate([indices_of(b) for b in batches]), order)
  assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
  assert order[:10].tolist() != order[10:].tolist()


def test_same_seed_same_batches_other_seed_other_batches(tiny_config):
  first, again, other = (
      np.concatenate([b['labels'] for b in take(
          data.train_batches(tiny_config, global_batch_size=4, seed=seed), 5)])
      for seed in (1, 1, 2))
  np.testing.assert_array_equal(first, again)
  assert first.tolist() != other.tolist()


@pytest.mark.parametrize('random_flip', [False, True])
def test_resume_yields_the_next_batch(tiny_config, random_flip):
  tiny_config.random_flip = random_flip
  fresh = take(data.train_batches(tiny_config, global_batch_size=4, seed=7), 8)
  for step in (1, 2, 7):
    resumed = next(data.train_batches(tiny_config, global_batch_size=4, seed=7, start_step=step))
    np.testing.assert_array_equal(resumed['images'], fresh[step]['images'])
    np.testing.assert_array_equal(resumed['labels'], fresh[step]['labels'])


@pytest.mark.parametrize('process_count', [2, 4])
def test_process_shards_concatenate_to_the_global_batch(tiny_config, process_count):
  tiny_config.random_flip = True
  global_batches = take(data.train_batches(tiny_config, global_batch_size=8, seed=5), 4)
  local_batches = [
      take(data.train_batches(tiny_config, global_batch_size=8, seed=5, process_index=p,
                              process_count=process_count), 4)
      for p in range(process_count)]
  for step, global_batch in enumerate(global_batches):
    for key in ('images', 'labels'):
      joined = np.concatenate([local[step][key] for local in local_batches])
      np.testing.assert_array_equal(joined, global_batch[key])


def test_batch_must_split_evenly_over_processes(tiny_config):
  with pytest.raises(ValueError, match='multiple of process_count'):
    data.train_batches(tiny_config, global_batch_size=6, seed=0, process_count=4)


def test_random_flip_mirrors_about_half_the_rows(tiny_config):
  tiny_config.random_flip = True
  flipped = []
  for batch in take(data.train_batches(tiny_config, global_batch_size=40, seed=0), 10):
    for image, label in zip(batch['images'], batch['labels']):
      upright = tiny_image(label) / 127.5 - 1
      if np.allclose(image, upright, atol=1e-6):
        flipped.append(False)
      else:
        np.testing.assert_allclose(image, upright[:, ::-1], atol=1e-6)
        flipped.append(True)
  assert 0.4 < np.mean(flipped) < 0.6  # 400 fair coins: 5 standard deviations either side


def test_fashion_mnist_resized_to_another_size(tiny_config):
  tiny_config.image_size = 32
  batch = next(data.train_batches(tiny_config, global_batch_size=4, seed=0))
  assert batch['images'].shape == (4, 32, 32, 1) and data.image_shape(tiny_config) == (32, 32, 1)


# ------------------------------------------------------------------ ADM resizing


def test_resize_is_box_averaging_when_the_size_halves():
  image = np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)
  box_mean = image.reshape(128, 2, 160, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(data.resize_and_centre_crop(image, 128), box_mean[:, 16:144], atol=1)
  image = np.random.default_rng(1).integers(0, 256, (520, 512, 3), dtype=np.uint8)
  box_mean = image.reshape(130, 4, 128, 4, 3).mean(axis=(1, 3))  # two halvings, two roundings
  np.testing.assert_allclose(data.resize_and_centre_crop(image, 128), box_mean[1:129], atol=2)


@pytest.mark.parametrize('shape, size', [((90, 150), 64), ((20, 30), 128)])
def test_resize_is_bicubic_otherwise(shape, size):
  rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
  image = np.round(127.5 + 100 * np.sin(cols / 9) * np.cos(rows / 7)).astype(np.uint8)
  image = np.repeat(image[..., None], 3, axis=-1)
  width = round(shape[1] * size / shape[0])
  reference = jax.image.resize(image.astype(np.float32), (size, width, 3), 'bicubic')
  left = (width - size) // 2
  np.testing.assert_allclose(data.resize_and_centre_crop(image, size),
                             np.asarray(reference)[:, left:left + size], atol=1.5)


# ------------------------------------------------------------------ tfds datasets, mocked


def source_indices(batches, reference):
  """Which reference image (upright or mirrored) each row of the batches shows."""
  rows = np.round((np.concatenate([b['images'] for b in batches]) + 1) * 127.5).astype(np.uint8)
  return [next(i for i, ref in enumerate(reference)
               if np.array_equal(row, ref) or np.array_equal(row, ref[:, ::-1])) for row in rows]


@pytest.mark.parametrize('name, shape', [('cifar10', (32, 32, 3)), ('imagenet64', (64, 64, 3)),
                                         ('imagenet128', (128, 128, 3))])
def test_tfds_datasets_through_the_same_path(name, shape):
  config = data.default_data_config(name)
  spec = data.dataset_spec(name)
  with tfds.testing.mock_data(num_examples=6):
    source = tfds.data_source(spec.tfds_name, split='train')
    reference = [data.resize_and_centre_crop(source[i]['image'], shape[0]) for i in range(6)]
    reference_labels = [int(source[i]['label']) for i in range(6)]
    batches = take(data.train_batches(config, global_batch_size=3, seed=0), 2)
    shard = next(data.train_batches(config, global_batch_size=3 * 2, seed=0, process_index=1,
                                    process_count=3))
    resumed = next(data.train_batches(config, global_batch_size=3, seed=0, start_step=1))
    again = take(data.train_batches(config, global_batch_size=3, seed=0), 2)
    other = take(data.train_batches(config, global_batch_size=3, seed=1), 2)
    images, labels = data.load_split(config, spec.eval_split, max_examples=4)
  assert data.image_shape(config) == shape
  assert batches[0]['images'].shape == (3,) + shape and batches[0]['images'].dtype == np.float32
  assert batches[0]['labels'].dtype == np.int32
  # One epoch of the stream holds every example once (up to flips), in an order set by the seed.
  matched = source_indices(batches, reference)
  assert sorted(matched) == list(range(6))
  assert [reference_labels[i] for i in matched] == np.concatenate(
      [b['labels'] for b in batches]).tolist()
  assert source_indices(again, reference) == matched
  other_order = source_indices(other, reference)
  assert sorted(other_order) == list(range(6)) and other_order != matched
  for key in ('images', 'labels'):
    np.testing.assert_array_equal(shard[key], np.concatenate([b[key] for b in batches])[2:4])
    np.testing.assert_array_equal(resumed[key], batches[1][key])
  assert images.shape == (4,) + shape and images.dtype == np.uint8 and labels.dtype == np.int32


def test_fashion_mnist_falls_back_to_tfds(tmp_path):
  config = data.default_data_config('fashion_mnist')
  config.fashion_mnist_dir = str(tmp_path / 'absent')
  with tfds.testing.mock_data(num_examples=5):
    images, labels = data.load_split(config, 'train')
    batch = next(data.train_batches(config, global_batch_size=5, seed=0))
  assert images.shape == (5, 28, 28, 1) and labels.shape == (5,)
  assert sorted(batch['labels'].tolist()) == sorted(labels.tolist())


# ------------------------------------------------------------------ errors


@pytest.fixture(name='offline')
def fixture_offline(monkeypatch):
  """No network: downloads and socket connections fail at once."""
  def refuse(*args, **kwargs):
    raise tfds.download.DownloadError('offline (test)')
  monkeypatch.setattr(tfds.download.DownloadManager, 'download', refuse)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract', refuse)
  monkeypatch.setattr(socket.socket, 'connect', refuse)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, offline):
  del offline
  config = data.default_data_config('fashion_mnist')
  config.fashion_mnist_dir = str(tmp_path / 'absent')
  config.tfds_data_dir = str(tmp_path / 'tfds')
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_split(config, 'train')
  message = str(error.value)
  for needed in ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', str(tmp_path / 'absent'),
                 'apt-get install -y dataset-fashion-mnist', 'data.fashion_mnist_dir'):
    assert needed in message
  assert isinstance(error.value, FileNotFoundError)


@pytest.mark.parametrize('name, needed', [
    ('imagenet128', ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')),
    ('imagenet64', ('Imagenet64_train_part1_npz.zip', 'Imagenet64_val_npz.zip'))])
def test_missing_imagenet_names_manual_dir_and_files(tmp_path, offline, name, needed):
  del offline
  config = data.default_data_config(name)
  config.tfds_data_dir = str(tmp_path / 'tfds')
  config.manual_dir = str(tmp_path / 'manual')
  with pytest.raises(data.DataNotFoundError, match='data.manual_dir') as error:
    next(data.train_batches(config, global_batch_size=2, seed=0))
  assert all(file in str(error.value) for file in needed)


def test_config_errors():
  with pytest.raises(ValueError, match="'cifar10'.*'fashion_mnist'.*'imagenet128'"):
    data.default_data_config('mnist')
  config = data.default_data_config('cifar10')
  config.num_classes = 100
  with pytest.raises(ValueError, match='num_classes = 10'):
    data.image_shape(config)
