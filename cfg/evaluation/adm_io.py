"""Interop with the ADM evaluator (openai/guided-diffusion `evaluations/`); cached reference statistics.

File formats (paper §7):
  sample batch     .npz with arr_0 = uint8 images [N, H, W, C] in [0, 255] and, for class-
                   conditional samples, arr_1 = int64 labels [N]. The ADM evaluator reads arr_0 with 3
                   channels; repeat grayscale (`np.repeat(images, 3, axis=-1)`) before handing it over.
  reference batch  .npz with mu, sigma (pool3 statistics), mu_s, sigma_s (spatial ones, for sFID) and
                   arr_0, e.g. VIRTUAL_imagenet64_labeled.npz, whose mu / sigma gave the published FIDs.
A sample batch is also a valid reference batch for the ADM evaluator: it computes statistics from arr_0.

Reference statistics of a dataset split are cached in an .npz (mu, sigma, pool3 features for precision /
recall, and for Inception the spatial mu / sigma of sFID) keyed by a fingerprint of the feature network and
the data, and recomputed when either changes.
"""

import dataclasses
import hashlib
import json
import zipfile
from typing import Optional

import jax
import numpy as np

from cfg import data, files, parallel
from cfg.evaluation import inception
from cfg.evaluation import metrics


def write_sample_batch(path, images, labels=None):
  """Writes arr_0 = images (uint8 NHWC) and, if given, arr_1 = labels (int64) to path."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'A sample batch holds uint8 images [N, H, W, 1 or 3]; got {images.dtype} '
                     f'{images.shape}. Convert [−1, 1] floats with cfg.data.to_uint8; put channels last.')
  arrays = {'arr_0': images}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'Expected one integer label per image, shape {images.shape[:1]}; got '
                       f'{labels.dtype} {labels.shape}.')
    arrays['arr_1'] = labels.astype(np.int64)
  files.save_npz(path, arrays)


def read_sample_batch(path):
  """(uint8 images [N, H, W, C], int64 labels [N] or None) from an ADM sample batch."""
  with files.open_npz(path) as npz:
    if 'arr_0' not in npz:
      raise ValueError(f'{path} has no arr_0 (keys: {sorted(npz.keys())}); a sample batch stores its '
                       'uint8 NHWC images as arr_0 (see adm_io.write_sample_batch).')
    return npz['arr_0'], (npz['arr_1'] if 'arr_1' in npz else None)


def iterate_npz_array(path, key, *, batch_size):
  """Yields key's array from an .npz in leading-axis slices of ≤ batch_size, never loading it whole.

  Reads the .npy member's header and then its raw bytes from the zip stream (stored or deflated), so
  50k samples at 256×256 (~10 GB) stream through a fixed amount of memory.
  """
  with files.path(path).open('rb') as raw, zipfile.ZipFile(raw) as archive:
    if f'{key}.npy' not in archive.namelist():
      raise ValueError(f'{path} has no array {key!r}; it holds '
                       f'{sorted(name[:-4] for name in archive.namelist())}.')
    with archive.open(f'{key}.npy') as stream:
      version = np.lib.format.read_magic(stream)
      if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
      else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
      if fortran_order or dtype.hasobject or not shape:
        with files.open_npz(path) as npz:
          array = npz[key]
        for start in range(0, len(array), batch_size):
          yield array[start:start + batch_size]
        return
      row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
      for start in range(0, shape[0], batch_size):
        count = min(batch_size, shape[0] - start)
        buffer = stream.read(count * row_bytes)
        if len(buffer) != count * row_bytes:
          raise ValueError(f'{path}: {key} ends early ({start} of {shape[0]} rows read); the file is '
                           'truncated.')
        yield np.frombuffer(buffer, dtype).reshape((count,) + tuple(shape[1:]))


def array_names(path):
  """The names of the arrays in an .npz, read from its zip directory (no array is loaded)."""
  with files.path(path).open('rb') as raw, zipfile.ZipFile(raw) as archive:
    return [name[:-4] for name in archive.namelist() if name.endswith('.npy')]


@dataclasses.dataclass(frozen=True)
class ReferenceBatch:
  """The contents of an ADM reference batch; absent entries are None."""
  mu: Optional[np.ndarray]
  sigma: Optional[np.ndarray]
  mu_spatial: Optional[np.ndarray]
  sigma_spatial: Optional[np.ndarray]
  images: Optional[np.ndarray]


def read_reference_batch(path, *, load_images=True):
  """mu, sigma (and mu_s, sigma_s, arr_0 when present) of an ADM reference batch .npz.

  load_images=False leaves the (possibly large) arr_0 on disk; stream it with `iterate_npz_array`.
  """
  with files.open_npz(path) as npz:
    keys = set(npz.keys())
    if not ({'mu', 'sigma'} <= keys or 'arr_0' in keys):
      raise ValueError(f'{path} is not an ADM reference batch: it needs mu and sigma, or images as arr_0 '
                       f'(keys: {sorted(keys)}).')
    get = lambda key: np.asarray(npz[key]) if key in keys else None
    return ReferenceBatch(mu=get('mu'), sigma=get('sigma'), mu_spatial=get('mu_s'),
                          sigma_spatial=get('sigma_s'), images=get('arr_0') if load_images else None)


def reference_batch_statistics(path, variables, *, batch_size=100):
  """{mu, sigma, mu_spatial, sigma_spatial, features} of a reference batch, as the ADM evaluator reads it.

  Stored mu / sigma, mu_s / sigma_s (the published numbers come from them) are used as they are; when
  mu is absent, FID and sFID statistics are computed from arr_0 (Inception pool3 and spatial features,
  float64 mean and N − 1 covariance). features are arr_0's pool3 features for precision / recall, which
  the ADM evaluator takes from the batch's own images (10k for VIRTUAL_imagenet64_labeled.npz); they
  and any spatial statistics not stored are None for a batch without images.
  """
  batch = read_reference_batch(path, load_images=False)
  has_images = 'arr_0' in array_names(path)
  stats = {'mu': batch.mu, 'sigma': batch.sigma, 'mu_spatial': batch.mu_spatial,
           'sigma_spatial': batch.sigma_spatial, 'features': None}
  if has_images:
    pool3, _, spatial = inception.compute_features(
        variables, iterate_npz_array(path, 'arr_0', batch_size=batch_size), batch_size=batch_size,
        spatial=True)
    stats['features'] = pool3
    if batch.mu is None:
      stats['mu'], stats['sigma'] = metrics.feature_statistics(pool3)
    if batch.mu is None or batch.mu_spatial is None:
      stats['mu_spatial'], stats['sigma_spatial'] = metrics.feature_statistics(spatial)
  return stats


def npz_image_features(path, variables, *, batch_size=100):
  """(pool3 [N, 2048], bias-free logits [N, 1008]) of arr_0 of a sample or reference batch, streamed."""
  return inception.compute_features(
      variables, iterate_npz_array(path, 'arr_0', batch_size=batch_size), batch_size=batch_size)


def weights_fingerprint(variables):
  """sha256 over the names, shapes and bytes of every leaf of a variables tree."""
  digest = hashlib.sha256()
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(key_path)}{leaf.shape}{leaf.dtype}'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


_STATISTICS = ('mu', 'sigma', 'features', 'mu_spatial', 'sigma_spatial')


def reference_statistics(data_config, *, split, features_fn, features_id, cache_path,
                         max_examples=None):
  """{mu, sigma, features[, mu_spatial, sigma_spatial]} over a data split, cached at cache_path.

  features_fn(uint8 images) returns the features [N, D], or {'features': …, 'spatial': …} when sFID's
  spatial statistics are wanted too. features_id names the feature network and its weights (e.g.
  `weights_fingerprint`); together with the data config, split and max_examples it keys the cache,
  which is recomputed when any of them changes.
  """
  data_record = {key: value for key, value in data_config.to_dict().items() if key != 'read_threads'}
  fingerprint = hashlib.sha256(json.dumps(
      [features_id, data_record, split, max_examples], sort_keys=True, default=str).encode()).hexdigest()
  if cache_path is not None and files.path(cache_path).exists():
    with files.open_npz(cache_path) as stored:
      if 'fingerprint' in stored and str(stored['fingerprint']) == fingerprint:
        return {key: stored[key] for key in _STATISTICS if key in stored}
  images, _ = data.load_split(data_config, split, max_examples)
  computed = features_fn(images)
  computed = computed if isinstance(computed, dict) else {'features': computed}
  features = np.asarray(computed['features'])
  mu, sigma = metrics.feature_statistics(features)
  stats = {'mu': mu, 'sigma': sigma, 'features': features}
  if computed.get('spatial') is not None:
    stats['mu_spatial'], stats['sigma_spatial'] = metrics.feature_statistics(computed['spatial'])
  if cache_path is not None and parallel.is_writer():  # the others compute the same and go on
    files.save_npz(cache_path, dict(stats, fingerprint=np.array(fingerprint),
                                   num_images=np.array(len(features))))
  return stats


def inception_reference_statistics(data_config, *, split, variables, cache_path, batch_size=100,
                                   max_examples=None):
  """`reference_statistics` of FID Inception pool3 and sFID's spatial features (ADM preprocessing,
  via `data.load_split`)."""

  def pool3_and_spatial(images):
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    pool3, _, spatial = inception.compute_features(variables, batches, batch_size=batch_size, spatial=True)
    return {'features': pool3, 'spatial': spatial}

  return reference_statistics(data_config, split=split, features_fn=pool3_and_spatial,
                              features_id=f'fid_inception+spatial:{weights_fingerprint(variables)}',
                              cache_path=cache_path, max_examples=max_examples)
