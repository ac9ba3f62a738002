"""A Fashion-MNIST classifier whose features stand in for Inception's (no Inception weights here).

Three numbers come from it, each named for this network and never called FID or Inception Score:
  fd_fmnist   Fréchet distance between Gaussians fitted to its penultimate features (D = 128) of the
              samples and of the Fashion-MNIST test split (`reference_stats`);
  is_fmnist   exp E_x KL(p(y|x) ‖ p(y)) of its softmax;
  label accuracy: the share of guided samples it classifies as their conditioning label.

A trained network lives in a directory written by `save_feature_net`:
  variables/                 orbax StandardCheckpointer tree {'params', 'batch_stats'}
  feature_net.json           network config, training settings, test accuracy, provenance
  reference_<name>_<split>_<n>.npz   `reference_stats` cache, written on first use
and is created by `python -m cfg.evaluation.feature_net --out=<directory>`.
"""

import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from cfg import data, files, parallel
from cfg.errors import MissingInputError

INFO_FILE = 'feature_net.json'
VARIABLES_DIR = 'variables'
CREATE_COMMAND = 'python -m cfg.evaluation.feature_net --out={directory}'
EVAL_BATCH_SIZE = 500


class FeatureNet(nn.Module):
  """[conv 3×3 stride 2 → BatchNorm → ReLU] per width; features = SiLU(dense); logits = dense.

  Strided convolutions, not max-pooling: on CPU, XLA's max-pool gradient made a step ~7× slower.
  SiLU, not ReLU, on the features: with ReLU 30 of 128 units never fired on the test split, so the
  feature covariance Σ of the Fréchet distance was singular; with SiLU every unit varies.
  """
  widths: tuple = (32, 64, 128)
  feature_dim: int = 128
  num_classes: int = 10
  dropout_rate: float = 0.3
  image_shape: tuple = (28, 28, 1)

  @nn.compact
  def __call__(self, images, *, train=False):
    """(features [B, feature_dim], logits [B, num_classes]) of images [B, H, W, C] in [−1, 1]."""
    x = images
    for width in self.widths:
      x = nn.Conv(width, (3, 3), strides=(2, 2))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.reshape(x.shape[0], -1))
    features = nn.silu(nn.Dense(self.feature_dim)(x))
    logits = nn.Dense(self.num_classes)(
        nn.Dropout(self.dropout_rate, deterministic=not train)(features))
    return features, logits


def network_from_config(network_config):
  """The FeatureNet a JSON network config describes (lists become the hashable tuples jit needs)."""
  config = dict(network_config)
  return FeatureNet(widths=tuple(config['widths']), feature_dim=int(config['feature_dim']),
                    num_classes=int(config['num_classes']),
                    dropout_rate=float(config['dropout_rate']),
                    image_shape=tuple(config['image_shape']))


def network_config(network):
  """The JSON-ready fields of a FeatureNet."""
  return {'widths': list(network.widths), 'feature_dim': network.feature_dim,
          'num_classes': network.num_classes, 'dropout_rate': network.dropout_rate,
          'image_shape': list(network.image_shape)}


def to_model_range(images):
  """uint8 u ↦ u / 127.5 − 1; float images are taken to be in [−1, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images must be uint8 in [0, 255] or floats in [−1, 1], got {images.dtype}.')
  return images.astype(jnp.float32)


@functools.partial(parallel.jit, static_argnames=('network', 'batch_size'))
def features_and_logits(network, variables, images, *, batch_size=EVAL_BATCH_SIZE):
  """(features [N, D] float32, logits [N, K]) of images [N, H, W, C], uint8 or in [−1, 1].

  Runs `batch_size` images at a time.
  """
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(network.image_shape):
    raise ValueError(f'images must have shape [N, {", ".join(map(str, network.image_shape))}] '
                     f'(NHWC), got {list(images.shape)}.')
  images = to_model_range(images)

  def one_image(image):
    features, logits = network.apply(variables, image[None], train=False)
    return features[0], logits[0]

  # lax.map vmaps `one_image` over chunks of `batch_size`: memory stays O(batch_size) for any N.
  return jax.lax.map(one_image, images, batch_size=min(batch_size, max(images.shape[0], 1)))


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedFeatureNet:
  """A FeatureNet with its variables and record; calling it gives (features, logits) as numpy."""
  network: FeatureNet
  variables: Any
  info: dict
  directory: Optional[os.PathLike] = None  # local path or URL (cfg.files.path)

  @property
  def test_accuracy(self):
    return self.info['test_accuracy']

  def features_and_logits(self, images, *, batch_size=EVAL_BATCH_SIZE):
    """(features [N, D] float32, logits [N, K] float32) as numpy arrays."""
    features, logits = features_and_logits(self.network, self.variables, jnp.asarray(images),
                                           batch_size=batch_size)
    return np.asarray(features), np.asarray(logits)

  __call__ = features_and_logits

  def predict(self, images):
    """argmax_y p(y|x) for each image, int32 [N]."""
    return np.argmax(self.features_and_logits(images)[1], axis=-1).astype(np.int32)


# ------------------------------------------------------------------ training


def random_shifts(images, key, *, max_shift):
  """Each image translated by (dy, dx) ~ U{−m..m}², uncovered pixels set to the background −1."""
  if max_shift == 0:
    return images
  height, width, channels = images.shape[1:]
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   constant_values=-1.0)
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * max_shift + 1)
  crop = lambda image, offset: jax.lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, offsets)


def _train_step_fn(network, optimizer, *, max_shift):
  """One Adam step on the softmax cross-entropy of shifted images → (variables, opt_state, loss)."""

  def train_step(variables, opt_state, images, labels, key):
    shift_key, dropout_key = jax.random.split(key)
    images = random_shifts(images, shift_key, max_shift=max_shift)

    def loss_fn(params):
      (_, logits), updates = network.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, images, train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    updates, opt_state = optimizer.update(grads, opt_state, variables['params'])
    params = optax.apply_updates(variables['params'], updates)
    return {'params': params, 'batch_stats': batch_stats}, opt_state, loss

  return parallel.jit(train_step, donate_argnums=(0, 1))


def train_feature_net(data_config, *, seed=0, steps=3000, batch_size=128, learning_rate=2e-3,
                      max_shift=0, widths=(32, 64, 128), feature_dim=128, dropout_rate=0.3,
                      max_test_examples=None, log_every=200):
  """Trains a FeatureNet on the train split (Adam, cosine-decayed rate) and measures test accuracy.

  Batches come from `cfg.data.train_batches`, so flips follow data.random_flip (off for
  Fashion-MNIST, whose shoes all point one way); `max_shift` > 0 also shifts each image by up to
  that many pixels (off by default: in one 3,000-step trial a 1-pixel shift cost test accuracy,
  91.8% → 91.0%).
  """
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f'steps = {steps} and batch_size = {batch_size} must be positive.')
  if not 0 <= max_shift < min(data.image_shape(data_config)[:2]):
    raise ValueError(f'max_shift = {max_shift} must lie in [0, image_size).')
  network = FeatureNet(widths=tuple(widths), feature_dim=feature_dim,
                       num_classes=data.num_classes(data_config), dropout_rate=dropout_rate,
                       image_shape=data.image_shape(data_config))
  init_key, train_key = jax.random.split(jax.random.key(seed))
  variables = dict(network.init(init_key, jnp.zeros((1, *network.image_shape)), train=False))
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = optimizer.init(variables['params'])
  train_step = _train_step_fn(network, optimizer, max_shift=max_shift)

  batches = data.train_batches(data_config, global_batch_size=batch_size, seed=seed)
  start = time.time()
  for step, batch in zip(range(steps), batches):
    variables, opt_state, loss = train_step(variables, opt_state, batch['images'], batch['labels'],
                                            jax.random.fold_in(train_key, step))
    if log_every and (step + 1) % log_every == 0:
      logging.info('feature net step %d/%d: loss %.4f (%.0f s)', step + 1, steps, float(loss),
                   time.time() - start)
  jax.block_until_ready(variables)
  train_seconds = time.time() - start

  training = {'seed': seed, 'steps': steps, 'batch_size': batch_size,
              'learning_rate': learning_rate, 'schedule': 'adam, cosine decay to 0',
              'max_shift': max_shift, 'train_split': 'train',
              'data': _data_record(data_config), 'train_seconds': round(train_seconds, 1)}
  trained = TrainedFeatureNet(network, variables, {'network': network_config(network),
                                                   'training': training})
  split = data.eval_split(data_config)
  accuracy, count = classification_accuracy(trained, data_config, split=split,
                                            max_examples=max_test_examples)
  trained.info.update(test_accuracy=accuracy, test_split=split, test_examples=count)
  return trained


def classification_accuracy(feature_net, data_config, *, split, max_examples=None):
  """(share of the first `max_examples` images of `split` whose argmax label is right, count)."""
  images, labels = data.load_split(data_config, split, max_examples)
  return float(np.mean(feature_net.predict(images) == labels)), int(len(labels))


def _data_record(data_config):
  return {'name': data_config.name, 'image_size': data_config.image_size,
          'random_flip': bool(data_config.random_flip), 'num_classes': data_config.num_classes}


# ------------------------------------------------------------------ saving and loading


def check_output_directory(directory, *, overwrite):
  """FileExistsError unless `directory` is absent, or is a feature net and overwrite is set."""
  directory = files.path(directory)
  if not directory.exists():
    return
  if not overwrite:
    raise FileExistsError(f'{directory} already exists; pass --overwrite (overwrite=True) to '
                          'replace it, or choose another --out.')
  if any(directory.iterdir()) and not (directory / INFO_FILE).is_file():
    raise FileExistsError(f'{directory} is not empty and holds no {INFO_FILE}; refusing to delete '
                          'a directory that is not a feature network. Choose another --out.')


def save_feature_net(feature_net, directory, *, overwrite=False, provenance=None):
  """Writes variables/ (orbax) and feature_net.json (info + provenance) into a fresh `directory`."""
  check_output_directory(directory, overwrite=overwrite)
  directory = files.path(directory)
  if directory.exists():
    directory.rmtree()
  directory.mkdir(parents=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / VARIABLES_DIR, feature_net.variables)
  checkpointer.wait_until_finished()
  info = dict(feature_net.info)
  if provenance is not None:
    info['provenance'] = provenance
  files.write_text(directory / INFO_FILE, json.dumps(info, indent=2) + '\n')
  return TrainedFeatureNet(feature_net.network, feature_net.variables, info, directory)


def load_feature_net(directory):
  """The TrainedFeatureNet saved in `directory`; MissingInputError naming the command to make it."""
  info_path, variables_path = files.join(directory, INFO_FILE), files.join(directory, VARIABLES_DIR)
  if not info_path.is_file() or not variables_path.is_dir():
    raise MissingInputError(
        f'No Fashion-MNIST feature network in {directory!r} (it needs {INFO_FILE} and '
        f'{VARIABLES_DIR}/). Create it with: {CREATE_COMMAND.format(directory=directory)}')
  info = files.read_json(info_path)
  network = network_from_config(info['network'])
  # Every process scores its own images with its own full copy, on its first local device (with several
  # processes orbax needs the target's sharding to know that).
  on_this_process = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_this_process),
      jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros((1, *network.image_shape)),
                                          train=False)))
  variables = ocp.StandardCheckpointer().restore(variables_path, dict(abstract))
  return TrainedFeatureNet(network, variables, info, files.path(directory))


# ------------------------------------------------------------------ reference statistics


def reference_stats(feature_net, data_config, *, split=None, max_examples=None):
  """{mu, sigma, features}: μ = mean, Σ = np.cov(rowvar=False) in float64 of the split's features.

  The split defaults to the dataset's held-out one (Fashion-MNIST: test). Cached as an .npz in the
  network's directory, keyed by the network's record and the data, and recomputed when either changes.
  """
  from cfg.evaluation import adm_io  # imports the Inception module; only needed here
  split = split or data.eval_split(data_config)
  if tuple(data.image_shape(data_config)) != tuple(feature_net.network.image_shape):
    raise ValueError(f'data config images are {data.image_shape(data_config)} but the feature net '
                     f'takes {feature_net.network.image_shape}; set data.image_size to match.')
  cache = None
  if feature_net.directory is not None:
    cache = files.join(feature_net.directory, f'reference_{data_config.name}_{split}_'
                       f'{"all" if max_examples is None else max_examples}.npz')
  return adm_io.reference_statistics(
      data_config, split=split, features_fn=lambda images: feature_net.features_and_logits(images)[0],
      features_id=feature_net.info, cache_path=cache, max_examples=max_examples)


# ------------------------------------------------------------------ command


def _provenance(train_seconds):
  from cfg.evaluation.provenance import git  # pylint: disable=g-import-not-at-top
  changed = git('status', '--porcelain', '--', 'cfg')
  return {
      'command': 'python -m cfg.evaluation.feature_net ' + ' '.join(sys.argv[1:]),
      'commit': git('rev-parse', 'HEAD'),
      'cfg_differs_from_commit': bool(changed) if changed is not None else None,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': f'{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, '
                 f'jax {jax.__version__} on {jax.default_backend()}',
      'wall_seconds': round(train_seconds, 1),
  }


def main(_):
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS
  check_output_directory(config.out, overwrite=config.overwrite)
  data_config = data.default_data_config('fashion_mnist')
  data_config.fashion_mnist_dir = config.fashion_mnist_dir
  start = time.time()
  trained = train_feature_net(data_config, seed=config.seed, steps=config.steps,
                              batch_size=config.batch_size, learning_rate=config.learning_rate,
                              max_shift=config.max_shift)
  saved = save_feature_net(trained, config.out, overwrite=config.overwrite,
                           provenance=_provenance(time.time() - start))
  print(f'test accuracy {saved.test_accuracy:.4f} on {saved.info["test_examples"]} '
        f'{saved.info["test_split"]} images; saved to {saved.directory} '
        f'({saved.info["provenance"]["wall_seconds"]:.0f} s)')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', None, 'Directory to create for the network.', required=True)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing network in --out.')
  flags.DEFINE_integer('steps', 3000, 'Training steps.')
  flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
  flags.DEFINE_float('learning_rate', 2e-3, 'Adam peak learning rate (cosine-decayed to 0).')
  flags.DEFINE_integer('max_shift', 0, 'Random translation of training images, in pixels.')
  flags.DEFINE_integer('seed', 0, 'Seed of initialisation, data order and augmentation.')
  flags.DEFINE_string('fashion_mnist_dir', '/usr/share/datasets/fashion-mnist',
                      'Folder with the four Fashion-MNIST IDX .gz files.')
  app.run(main)
