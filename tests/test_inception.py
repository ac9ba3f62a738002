"""The Flax FID InceptionV3 against pytorch-fid's own network, run on shared synthetic weights.

How the fixture tests/data/inception_fixture.npz was made (experiments/inception_fixture.py, in a torch
venv outside the repository; python 3.11.7, torch 2.14.1+cu130 run on CPU, torchvision 0.29.1+cu130,
pytorch-fid 0.3.0, numpy 2.4.6 — the exact string is stored in the fixture's `versions`):
pytorch-fid's `InceptionV3([3])` was built offline with `load_state_dict_from_url` patched to return
`cfg.evaluation.synthetic_weights` tensors (Kaiming-normal convs, BatchNorm statistics near but not at
(0, 1), seed 0; regenerated here from name, shape and seed, never stored), then run on two uint8 images
per size — grayscale 28×28 (repeated to RGB for torch), RGB 32×32, 64×64, 299×299 and grayscale 384×320 —
given to it as x / 255. The fixture keeps the images, pool3 and the bias-free logits pool3 · fc.weightᵀ.

Relative error here is max |ours − theirs| / max |theirs| over a group (elementwise ratios are
meaningless for pool3 entries at 0 after ReLU), bounded by 1e-4; measured ≤ 6e-7 for pool3 and ≤ 9e-7
for logits. A random network maps all images to similar features (they differ by ~1–2 %), so the
differences between images, which are all that FID sees, are checked to the same bound separately
(measured ≤ 2e-6). Antialiased resizing or padding counted in the average pools fails by 1e-1.
"""

import hashlib
import os

import numpy as np
import pytest

from cfg.evaluation import inception
from cfg.evaluation import synthetic_weights

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'inception_fixture.npz')
# sFID features of the same network and images, recorded by a forward hook on pytorch-fid's
# Mixed_6d.branch1x1 (experiments/inception_spatial_fixture.py, same environment).
SPATIAL_FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'inception_spatial_fixture.npz')
GROUPS = ('gray28', 'rgb32', 'rgb64', 'rgb299', 'gray384x320')
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as npz:
    return dict(npz)


@pytest.fixture(scope='module')
def variables(fixture):
  return inception.synthetic_inception_variables(seed=int(fixture['seed']))


def _relative_error(ours, theirs):
  return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def _assert_matches(ours, theirs, what):
  ours = np.asarray(ours, np.float64)
  theirs = np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, what
  assert _relative_error(ours, theirs) <= TOLERANCE, what
  centred_ours, centred_theirs = ours - ours.mean(0), theirs - theirs.mean(0)
  assert _relative_error(centred_ours, centred_theirs) <= TOLERANCE, f'{what}, between images'


def test_state_dict_names_and_shapes_are_pytorch_fids(fixture):
  theirs = {}
  for entry in fixture['state_dict_shapes']:
    name, shape = str(entry).split(':')
    theirs[name] = tuple(int(size) for size in shape.split('x') if size)
  unused = {name for name in theirs if name.endswith('num_batches_tracked') or name == 'fc.bias'}
  assert inception.expected_state_dict_shapes() == {
      name: shape for name, shape in theirs.items() if name not in unused}


def test_synthetic_weights_are_those_the_fixture_was_made_with(fixture):
  shapes = inception.expected_state_dict_shapes()
  shapes['fc.bias'] = (inception.NUM_LOGITS,)  # hashed on the torch side too
  generated = synthetic_weights.synthetic_state_dict(shapes, seed=int(fixture['seed']))
  digest = hashlib.sha256()
  for name in sorted(generated):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(generated[name], np.float32).tobytes())
  assert digest.hexdigest() == str(fixture['weights_sha256']), (
      'the synthetic weight generator changed; rerun experiments/inception_fixture.py')


@pytest.mark.parametrize('group', GROUPS)
def test_pool3_and_logits_match_pytorch_fid(fixture, variables, group):
  pool3, logits = inception.inception_features(variables, fixture[f'images_{group}'])
  assert pool3.shape[1] == inception.POOL3_DIM and logits.shape[1] == inception.NUM_LOGITS
  _assert_matches(pool3, fixture[f'pool3_{group}'], f'pool3 {group}')
  _assert_matches(logits, fixture[f'logits_{group}'], f'logits {group}')


@pytest.fixture(scope='module')
def spatial_fixture():
  with np.load(SPATIAL_FIXTURE) as npz:
    return dict(npz)


@pytest.mark.parametrize('group', GROUPS)
def test_spatial_features_match_pytorch_fids_mixed_6d_branch1x1(fixture, spatial_fixture, variables,
                                                                group):
  assert str(spatial_fixture['module']) == f'{inception.SPATIAL_BLOCK}.branch1x1'
  pool3, logits, spatial = inception.inception_features(variables, fixture[f'images_{group}'],
                                                        spatial=True)
  assert spatial.shape == (2, inception.SPATIAL_DIM) and inception.SPATIAL_DIM == 2023
  _assert_matches(spatial, spatial_fixture[f'spatial_{group}'], f'spatial {group}')
  _assert_matches(pool3, fixture[f'pool3_{group}'], f'pool3 {group} with spatial=True')
  _assert_matches(logits, fixture[f'logits_{group}'], f'logits {group} with spatial=True')


def test_spatial_features_are_not_those_of_a_neighbouring_block(fixture, spatial_fixture, variables):
  # The reference singles out Mixed_6d: the same 7 channels of the other 17×17 blocks' 1×1 branch
  # (Mixed_6c has the very same shapes) are far from it.
  x = inception.preprocess_images(fixture['images_rgb64'])
  _, state = inception.FidInceptionV3().apply(variables, x, mutable=['intermediates'])
  errors = {}
  for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    (output,) = state['intermediates'][block]['branch1x1_output']
    flat = np.asarray(output[..., :7]).reshape(2, -1)
    errors[block] = _relative_error(flat, spatial_fixture['spatial_rgb64'])
  assert errors['Mixed_6d'] <= TOLERANCE, errors
  assert min(errors[block] for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6e')) > 0.1, errors


def test_compute_features_with_spatial_pads_short_batches(fixture, spatial_fixture, variables):
  images = fixture['images_rgb32']
  pool3, logits, spatial = inception.compute_features(variables, [images[:1], images[1:]],
                                                      batch_size=2, spatial=True)
  assert pool3.shape == (2, inception.POOL3_DIM) and logits.shape == (2, inception.NUM_LOGITS)
  _assert_matches(spatial, spatial_fixture['spatial_rgb32'], 'spatial through compute_features')


def test_float_images_in_minus_one_one_match_uint8(fixture, variables):
  images = fixture['images_rgb64'].astype(np.float32) / 127.5 - 1.0
  pool3, logits = inception.inception_features(variables, images)
  _assert_matches(pool3, fixture['pool3_rgb64'], 'pool3 from float input')
  _assert_matches(logits, fixture['logits_rgb64'], 'logits from float input')


def test_compute_features_pads_short_batches(fixture, variables):
  images = np.concatenate([fixture['images_rgb32'], fixture['images_rgb32'][:1]])  # 3 images
  pool3, logits = inception.compute_features(variables, [images[:2], images[2:]], batch_size=2)
  expected_pool3 = np.concatenate([fixture['pool3_rgb32'], fixture['pool3_rgb32'][:1]])
  assert pool3.shape == (3, inception.POOL3_DIM) and logits.shape == (3, inception.NUM_LOGITS)
  _assert_matches(pool3, expected_pool3, 'pool3 through compute_features')


def test_missing_weights_file_says_where_to_get_and_how_to_convert(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    inception.load_inception_params(tmp_path / 'inception_fid.npz')
  message = str(error.value)
  assert str(tmp_path / 'inception_fid.npz') in message
  assert inception.TORCH_WEIGHTS_URL in message
  assert 'python -m cfg.evaluation.convert_inception' in message


def test_torch_weights_file_is_refused_with_the_convert_command(tmp_path):
  path = tmp_path / inception.TORCH_WEIGHTS_FILE
  path.write_bytes(b'not read')
  with pytest.raises(ValueError, match='convert_inception'):
    inception.load_inception_params(path)


def test_weights_round_trip_through_npz_and_bad_shapes_are_named(tmp_path, variables):
  shapes = inception.expected_state_dict_shapes()
  state_dict = synthetic_weights.synthetic_state_dict(shapes, seed=0)
  path = tmp_path / 'weights.npz'
  np.savez(path, **state_dict)
  loaded = inception.load_inception_params(path)
  kernel = loaded['params']['Mixed_7c']['branch_pool']['conv']['kernel']
  np.testing.assert_array_equal(kernel, variables['params']['Mixed_7c']['branch_pool']['conv']['kernel'])
  np.testing.assert_array_equal(  # torch [out, in, kh, kw] → Flax [kh, kw, in, out]
      kernel, np.transpose(state_dict['Mixed_7c.branch_pool.conv.weight'], (2, 3, 1, 0)))

  state_dict['Mixed_5b.branch1x1.conv.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  np.savez(path, **state_dict)
  with pytest.raises(ValueError, match='Mixed_5b.branch1x1.conv.weight'):
    inception.load_inception_params(path)


def test_bad_image_shapes_are_refused(variables):
  with pytest.raises(ValueError, match='NHWC'):
    inception.preprocess_images(np.zeros((2, 3, 32, 32), np.uint8))
