"""Training and reference data: Fashion-MNIST, CIFAR-10, ImageNet 64×64 and 128×128.

The training stream is a pure function of (seed, step). Example positions run over the
concatenation of per-epoch permutations, position g = step · B + row for a global batch of B,
so the GLOBAL batch at a step never depends on how many processes read it: process p takes rows
[p·L, (p + 1)·L), L = B / process_count. A run resumes by passing the number of batches it has
consumed as `start_step`; that integer is the whole checkpointed position of the input pipeline.

Fashion-MNIST lives in memory (read straight from Debian's IDX files, or from tfds when they are
absent) and batches are one vectorised gather. The tfds datasets are read by random access
(`array_record` data sources) through grain, whose threads decode and resize examples ahead of
the trainer; random access is what makes the order a function of (seed, step) and resumption an
index, where a tf.data shuffle buffer would have to be replayed or checkpointed.

Images come out NHWC float32 in [−1, 1]; labels int32 in [0, num_classes).

Config fields (`default_data_config(name)` fills them):
  name               'fashion_mnist' | 'cifar10' | 'imagenet64' | 'imagenet128'.
  fashion_mnist_dir  folder with the four Fashion-MNIST IDX .gz files.
  tfds_data_dir      where tfds keeps prepared datasets (None: the tfds default, ~/tensorflow_datasets).
  manual_dir         folder with manually downloaded archives for tfds (ImageNet), or None.
  image_size         output height = width; other sizes are box-downsampled, resized and centre-cropped.
  random_flip        horizontal flip with probability 1/2 per example, drawn from (seed, position).
  num_classes        must equal the dataset's class count (the null label of guidance is this value).
  read_threads       (optional, default 16) grain threads reading tfds examples.
"""

import dataclasses
import functools
import gzip
import itertools
import os

import grain
import ml_collections
import numpy as np
from PIL import Image

from cfg.errors import MissingInputError

_FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_IDX_IMAGES_MAGIC = 0x00000803  # uint8 entries, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # uint8 entries, 1 dimension


class DataNotFoundError(MissingInputError):
  """The dataset's files are neither on disk nor downloadable; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  tfds_name: str
  image_size: int
  channels: int
  num_classes: int
  train_split: str
  eval_split: str
  random_flip: bool
  how_to_get: str


DATASETS = {
    # Flips off: every Fashion-MNIST shoe points left, so mirrored shoes are off-distribution.
    'fashion_mnist': DatasetSpec(
        'fashion_mnist', 28, 1, 10, 'train', 'test', False,
        'apt-get install -y dataset-fashion-mnist'),
    'cifar10': DatasetSpec(
        'cifar10', 32, 3, 10, 'train', 'test', True,
        'tfds downloads cifar-10-binary.tar.gz from www.cs.toronto.edu; offline, put that file in '
        'data.manual_dir'),
    'imagenet64': DatasetSpec(
        'imagenet_resized/64x64', 64, 3, 1000, 'train', 'validation', True,
        'put Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip and '
        'Imagenet64_val_npz.zip (the downsampled ImageNet 64x64 archives from '
        'https://image-net.org/download-images, registration required) in data.manual_dir'),
    'imagenet128': DatasetSpec(
        'imagenet2012', 128, 3, 1000, 'train', 'validation', True,
        'put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (ILSVRC2012 from '
        'https://image-net.org/download-images, registration required) in data.manual_dir'),
}


def default_data_config(name):
  """The `data` ConfigDict of dataset `name` with its native size, classes and flip setting."""
  spec = dataset_spec(name)
  return ml_collections.ConfigDict({
      'name': name,
      'fashion_mnist_dir': '/usr/share/datasets/fashion-mnist',
      'tfds_data_dir': ml_collections.config_dict.placeholder(str),
      'manual_dir': ml_collections.config_dict.placeholder(str),
      'image_size': spec.image_size,
      'random_flip': spec.random_flip,
      'num_classes': spec.num_classes,
      'read_threads': 16,
  })


def dataset_spec(name):
  """The fixed facts about dataset `name`; ValueError naming the valid names otherwise."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; data.name must be one of {sorted(DATASETS)}.')
  return DATASETS[name]


def image_shape(data_config):
  """(H, W, C) of the images `train_batches` and `load_split` return."""
  spec = _checked_spec(data_config)
  return (data_config.image_size, data_config.image_size, spec.channels)


def num_classes(data_config):
  """Number of real classes; labels lie in [0, num_classes) and num_classes is the null label."""
  return _checked_spec(data_config).num_classes


def eval_split(data_config):
  """The held-out split used as the reference set ('test' or 'validation')."""
  return _checked_spec(data_config).eval_split


def _checked_spec(data_config):
  spec = dataset_spec(data_config.name)
  if not isinstance(data_config.image_size, int) or data_config.image_size <= 0:
    raise ValueError(f'data.image_size must be a positive int, got {data_config.image_size!r}.')
  if data_config.num_classes != spec.num_classes:
    raise ValueError(f'data.num_classes = {data_config.num_classes} but {data_config.name} has '
                     f'{spec.num_classes} classes; set data.num_classes = {spec.num_classes}.')
  return spec


# ------------------------------------------------------------------ preprocessing


def resize_and_centre_crop(image, size):
  """ADM's preprocessing: halve by 2×2 box averaging while the short side ≥ 2·size, bicubic-resize
  the short side to `size`, crop the central size × size (uint8 HWC in and out)."""
  if image.shape[:2] == (size, size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(side // 2 for side in pil.size), resample=Image.Resampling.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(max(size, round(side * scale)) for side in pil.size),
                   resample=Image.Resampling.BICUBIC)
  array = np.asarray(pil).reshape(pil.size[1], pil.size[0], channels)
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  return array[top:top + size, left:left + size]


def to_model_range(images):
  """x = u / 127.5 − 1: uint8 [0, 255] → float32 [−1, 1]."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images):
  """u = clip(round(127.5 (x + 1)), 0, 255): float [−1, 1] → uint8 [0, 255], the inverse of to_model_range."""
  return np.clip(np.round(127.5 * (np.asarray(images, np.float32) + 1.0)), 0, 255).astype(np.uint8)


def _splitmix64(x):
  """SplitMix64 finaliser (Steele et al. 2014), elementwise on uint64 with wrap-around."""
  with np.errstate(over='ignore'):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flip_decisions(seed, positions):
  """Bernoulli(1/2) per global stream position: top bit of splitmix64(splitmix64(seed) + position)."""
  seed_hash = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
  with np.errstate(over='ignore'):
    mixed = _splitmix64(seed_hash + np.asarray(positions, dtype=np.int64).astype(np.uint64))
  return (mixed >> np.uint64(63)).astype(bool)


class ExampleOrder:
  """Maps stream position g to example perm_e[g mod N], e = g div N, perm_e from (seed, e)."""

  def __init__(self, *, num_examples, seed):
    if num_examples <= 0:
      raise ValueError('The training split is empty.')
    self.num_examples = num_examples
    self.seed = seed % 2**64

  @functools.lru_cache(maxsize=4)
  def permutation(self, epoch):
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def example_indices(self, positions):
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      indices[in_epoch] = self.permutation(int(epoch))[offsets[in_epoch]]
    return indices


def local_positions(step, *, global_batch_size, process_index, process_count):
  """Stream positions of process p's rows at a step: step·B + [p·L, (p + 1)·L), L = B / P."""
  local_batch_size = global_batch_size // process_count
  start = step * global_batch_size + process_index * local_batch_size
  return np.arange(start, start + local_batch_size, dtype=np.int64)


def _finish_batch(images, labels, positions, *, seed, random_flip):
  """Flips the chosen rows, maps to [−1, 1] and types labels int32."""
  images = to_model_range(images)  # a fresh array, so flipping in place is safe
  if random_flip:
    flip = flip_decisions(seed, positions)
    images[flip] = images[flip, :, ::-1]
  return {'images': images, 'labels': np.asarray(labels, dtype=np.int32)}


# ------------------------------------------------------------------ training stream


def train_batches(data_config, *, global_batch_size, seed, start_step=0, process_index=0,
                  process_count=1):
  """Infinite iterator of this process's rows of global batches start_step, start_step + 1, ….

  Yields {'images': float32 [B/P, H, W, C] in [−1, 1], 'labels': int32 [B/P]}.
  """
  spec = _checked_spec(data_config)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size = {global_batch_size} must be a positive multiple of '
                     f'process_count = {process_count}; every process reads an equal share.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index = {process_index} is not in [0, {process_count}).')
  if start_step < 0:
    raise ValueError(f'start_step = {start_step} must be ≥ 0.')
  shard = dict(global_batch_size=global_batch_size, process_index=process_index,
               process_count=process_count)
  if data_config.name == 'fashion_mnist':
    images, labels = _fashion_mnist_arrays(data_config, spec.train_split)
    return _array_batches(images, labels, shard=shard, seed=seed, start_step=start_step,
                          random_flip=data_config.random_flip)
  return _source_batches(data_config, _tfds_source(data_config, spec.train_split), shard=shard,
                         seed=seed, start_step=start_step)


def _array_batches(images, labels, *, shard, seed, start_step, random_flip):
  order = ExampleOrder(num_examples=len(labels), seed=seed)
  for step in itertools.count(start_step):
    positions = local_positions(step, **shard)
    indices = order.example_indices(positions)
    yield _finish_batch(images[indices], labels[indices], positions, seed=seed,
                        random_flip=random_flip)


def _source_batches(data_config, source, *, shard, seed, start_step):
  """grain: each thread reads, decodes, resizes and stacks one whole local batch, in step order."""
  order = ExampleOrder(num_examples=len(source), seed=seed)

  def read_batch(step):
    positions = local_positions(step, **shard)
    examples = [source[int(index)] for index in order.example_indices(positions)]
    images = np.stack([resize_and_centre_crop(np.asarray(example['image']), data_config.image_size)
                       for example in examples])
    labels = np.array([example['label'] for example in examples])
    return _finish_batch(images, labels, positions, seed=seed, random_flip=data_config.random_flip)

  # Parallel over batches, not examples: grain's prefetch polls its whole buffer per element.
  threads = _read_threads(data_config)
  steps = grain.MapDataset.range(start_step, 2**62)
  return iter(steps.map(read_batch).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)))


def _read_threads(data_config):
  return data_config.get('read_threads', 16)


# ------------------------------------------------------------------ reference sets


def load_split(data_config, split, max_examples=None):
  """(uint8 images [N, H, W, C], int32 labels [N]): the first N examples of `split`, in file order."""
  spec = _checked_spec(data_config)
  if data_config.name == 'fashion_mnist':
    images, labels = _fashion_mnist_arrays(data_config, split)
    return images[:max_examples], labels[:max_examples]
  return _read_all(_tfds_source(data_config, split), image_size=data_config.image_size,
                   channels=spec.channels, read_threads=_read_threads(data_config),
                   max_examples=max_examples)


def _read_all(source, *, image_size, channels, read_threads, max_examples=None, chunk=256):
  """The first max_examples (default all) examples of a random-access source, resized, stacked."""
  count = len(source) if max_examples is None else min(max_examples, len(source))

  def read_chunk(start):
    examples = [source[index] for index in range(start, min(start + chunk, count))]
    return (np.stack([resize_and_centre_crop(np.asarray(example['image']), image_size)
                      for example in examples]),
            np.array([example['label'] for example in examples], dtype=np.int32))

  chunks = list(grain.MapDataset.range(0, count, chunk).map(read_chunk).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads)))
  if not chunks:
    return np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros((0,), np.int32)
  return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


# ------------------------------------------------------------------ Fashion-MNIST


def _fashion_mnist_arrays(data_config, split):
  """Read-only (uint8 [N, S, S, 1], int32 [N]) from the IDX folder, else from tfds."""
  if split not in _FASHION_MNIST_FILES:
    raise ValueError(f'Fashion-MNIST split {split!r} unknown; use one of {sorted(_FASHION_MNIST_FILES)}.')
  folder = data_config.fashion_mnist_dir
  missing = [name for names in _FASHION_MNIST_FILES.values() for name in names
             if not os.path.isfile(os.path.join(folder, name))]
  if missing:
    images, labels = _fashion_mnist_from_tfds(data_config, split, folder=folder, missing=missing)
  else:
    images, labels = read_fashion_mnist_idx(folder, split)
  if data_config.image_size != images.shape[1]:
    images = np.stack([resize_and_centre_crop(image, data_config.image_size) for image in images])
    images.setflags(write=False)
  return images, labels


@functools.lru_cache(maxsize=4)
def read_fashion_mnist_idx(folder, split):
  """Decodes `<split>-images-idx3-ubyte.gz` / `-labels-idx1-ubyte.gz` (read-only arrays, cached)."""
  image_file, label_file = (os.path.join(folder, name) for name in _FASHION_MNIST_FILES[split])
  with gzip.open(image_file, 'rb') as f:
    image_bytes = f.read()
  with gzip.open(label_file, 'rb') as f:
    label_bytes = f.read()
  magic, count, rows, cols = np.frombuffer(image_bytes, dtype='>u4', count=4)
  label_magic, label_count = np.frombuffer(label_bytes, dtype='>u4', count=2)
  if (magic, label_magic) != (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC) or count != label_count or \
      len(image_bytes) != 16 + int(count) * rows * cols or len(label_bytes) != 8 + int(count):
    raise ValueError(f'{image_file} / {label_file} are not a matching pair of IDX files '
                     f'(magic {magic:#x} / {label_magic:#x}, counts {count} / {label_count}); '
                     'reinstall them with `apt-get install --reinstall dataset-fashion-mnist`.')
  images = np.frombuffer(image_bytes, dtype=np.uint8, offset=16).reshape(count, rows, cols, 1)
  labels = np.frombuffer(label_bytes, dtype=np.uint8, offset=8).astype(np.int32)
  labels.setflags(write=False)
  return images, labels


def _fashion_mnist_from_tfds(data_config, split, *, folder, missing):
  try:
    source = _prepared_tfds_source(data_config, 'fashion_mnist', split)
  except _PreparationError as failure:
    error = failure.__cause__
    raise DataNotFoundError(
        f'Fashion-MNIST not found. The folder data.fashion_mnist_dir = {folder!r} must hold '
        f'{", ".join(sum(_FASHION_MNIST_FILES.values(), ()))} but lacks {", ".join(missing)}; '
        f'and the fallback, tfds "fashion_mnist" in data.tfds_data_dir = '
        f'{data_config.tfds_data_dir!r}, failed ({type(error).__name__}: {error}). Fix: '
        '`apt-get install -y dataset-fashion-mnist` (installs the four files in '
        '/usr/share/datasets/fashion-mnist), or copy them into a folder and set '
        'data.fashion_mnist_dir to it, or run once with internet access so tfds downloads it.'
    ) from error
  images, labels = _read_all(source, image_size=28, channels=1,
                             read_threads=_read_threads(data_config))
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


# ------------------------------------------------------------------ tfds


def _tfds_source(data_config, split):
  spec = dataset_spec(data_config.name)
  try:
    return _prepared_tfds_source(data_config, spec.tfds_name, split)
  except _PreparationError as error:
    cause = error.__cause__
    raise DataNotFoundError(
        f'tfds could not prepare {spec.tfds_name!r} (data.name = {data_config.name!r}) in '
        f'data.tfds_data_dir = {data_config.tfds_data_dir!r} with data.manual_dir = '
        f'{data_config.manual_dir!r}: {type(cause).__name__}: {cause}\nTo get it: '
        f'{spec.how_to_get}; tfds then builds array_record files once in data.tfds_data_dir.'
    ) from cause


class _PreparationError(Exception):
  """tfds failed to download or build a dataset."""


def _prepared_tfds_source(data_config, tfds_name, split):
  """`tfds.data_source` spelled out, so that only preparation failures count as missing data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow; tfds only
  # array_record is the random-access format; tfds.data_source only defaults to it without data_dir.
  builder = tfds.builder(tfds_name, data_dir=data_config.tfds_data_dir, file_format='array_record')
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_config.manual_dir))
  except Exception as error:  # pylint: disable=broad-except  # reported with its cause
    raise _PreparationError() from error
  return builder.as_data_source(split=split)
