"""The Flax DINOv2 against timm's and the official DINOv2 ViT, run on generated weights (no torch here).

How tests/data/dinov2_fixture.npz was made (experiments/dinov2_fixture.py, in a torch venv outside the
repository; python 3.11.7, torch 2.14.1+cu130 on CPU, timm 1.0.31, numpy 2.4.6, facebookresearch/dinov2
at commit b8931f7 — the version string is stored in the fixture's `versions`): two tiny ViTs of
ViT-L/14's structure with generated weights (stored, with their torch names), run by timm's
`vit_large_patch14_dinov2` (at the native position grid, where timm and the official module agree
bitwise) and by the official `DinoVisionTransformer` (also at other grids, where DINOv2 resizes its
position embedding with its 0.1 offset), and through EDM2's FD_DINOv2 recipe from uint8 images
(torch's antialiased bicubic resize, ImageNet mean / std), once at the real 224 px with the real
37 → 16 position resize.

Relative error is max |ours − theirs| / max |theirs| over a group, bounded by 1e-4 as for the Inception
port, and checked again on the differences between images.
"""

import os

import numpy as np
import pytest

from cfg.evaluation import dinov2
from cfg.evaluation import torch_resize

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'dinov2_fixture.npz')
TOLERANCE = 1e-4
SMALL = dict(patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0, pos_grid=5)
GEOMETRY = dict(patch_size=14, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0, pos_grid=37)


@pytest.fixture(scope='module')
def fixture():
  with np.load(FIXTURE) as npz:
    return dict(npz)


def _state_dict(fixture, prefix):
  return {key[len(prefix) + 1:]: value for key, value in fixture.items() if key.startswith(prefix + '/')}


@pytest.fixture(scope='module')
def small_variables(fixture):
  return dinov2.variables_from_state_dict(_state_dict(fixture, 'small'), SMALL)


def _relative_error(ours, theirs):
  return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def _assert_matches(ours, theirs, what):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, what
  assert _relative_error(ours, theirs) <= TOLERANCE, (what, _relative_error(ours, theirs))
  centred_ours, centred_theirs = ours - ours.mean(0), theirs - theirs.mean(0)
  assert _relative_error(centred_ours, centred_theirs) <= TOLERANCE, f'{what}, between images'


def _network_input(images):
  """(x / 255 − mean) / std: the fixture script's network input for its `net*` groups."""
  return (images.astype(np.float32) / 255 - np.float32(dinov2.IMAGENET_MEAN)) / np.float32(dinov2.IMAGENET_STD)


def test_state_dict_names_are_the_official_ones_less_the_mask_token(fixture):
  theirs = {name: value.shape for name, value in _state_dict(fixture, 'small').items()}
  del theirs['mask_token']  # used only for masked-image training
  assert dinov2.expected_state_dict_shapes(SMALL) == theirs


def test_features_match_timm_at_the_native_grid(fixture, small_variables):
  x = _network_input(fixture['net70_images'])
  features = dinov2._network(small_variables, x, tuple(sorted(SMALL.items())))
  assert features.shape == (2, 32)
  _assert_matches(features, fixture['net70_timm'], 'timm, 70 px')


@pytest.mark.parametrize('side', [70, 42, 98])  # position grid 5 → 5, 3, 7
def test_features_match_official_dinov2_with_position_resize(fixture, small_variables, side):
  x = _network_input(fixture[f'net{side}_images'])
  features = dinov2._network(small_variables, x, tuple(sorted(SMALL.items())))
  _assert_matches(features, fixture[f'net{side}_official'], f'official, {side} px')


@pytest.mark.parametrize('group', ['rgb32', 'rgb96', 'gray28'])
def test_edm2_recipe_from_uint8_images_matches(fixture, small_variables, group):
  features = dinov2.dinov2_features(small_variables, fixture[f'recipe_{group}_images'],
                                    architecture=SMALL, image_size=42)
  _assert_matches(features, fixture[f'recipe_{group}_official'], f'EDM2 recipe, {group}')


def test_float_images_in_minus_one_one_match_uint8(fixture, small_variables):
  images = fixture['recipe_rgb32_images'].astype(np.float32) / 127.5 - 1.0
  features = dinov2.dinov2_features(small_variables, images, architecture=SMALL, image_size=42)
  _assert_matches(features, fixture['recipe_rgb32_official'], 'EDM2 recipe from float input')


def test_bad_inputs_are_refused(small_variables):
  with pytest.raises(ValueError, match='NHWC'):
    dinov2.preprocess_images(np.zeros((2, 3, 32, 32), np.uint8))
  with pytest.raises(ValueError, match='multiple of the patch size'):
    dinov2.dinov2_features(small_variables, np.zeros((1, 32, 32, 3), np.uint8), architecture=SMALL,
                           image_size=40)


def test_edm2_recipe_at_224_with_vit_l14_position_grid(fixture):
  variables = dinov2.variables_from_state_dict(_state_dict(fixture, 'geometry'), GEOMETRY)
  features = dinov2.compute_features(variables, [fixture['geometry_rgb64_images'][:1],
                                                 fixture['geometry_rgb64_images'][1:]],
                                     batch_size=1, architecture=GEOMETRY)
  _assert_matches(features, fixture['geometry_rgb64_official'], 'EDM2 recipe at 224 px, grid 37 → 16')


def test_vit_l14_architecture_is_dinov2_vitl14():
  shapes = dinov2.expected_state_dict_shapes()
  assert shapes['pos_embed'] == (1, 1 + 37 * 37, 1024) and shapes['cls_token'] == (1, 1, 1024)
  assert shapes['patch_embed.proj.weight'] == (1024, 3, 14, 14)
  assert shapes['blocks.23.mlp.fc1.weight'] == (4096, 1024) and 'blocks.24.norm1.weight' not in shapes
  # Counted with torch: the official vit_large(img_size=518, patch_size=14) state dict holds 304,368,640
  # numbers, 1,024 of them the mask token; timm's vit_large_patch14_dinov2 holds 304,367,616.
  assert sum(np.prod(shape) for shape in shapes.values()) == 304_368_640 - 1024


def test_position_resize_is_identity_at_the_native_grid():
  np.testing.assert_array_equal(dinov2.position_resize_matrix(37, 37), np.eye(37))
  matrix = dinov2.position_resize_matrix(37, 16)
  assert matrix.shape == (16, 37)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-12)  # bicubic weights sum to one


def test_antialiased_resize_to_the_same_size_is_identity():
  np.testing.assert_allclose(torch_resize.antialiased_bicubic_matrix(224, 224), np.eye(224), atol=1e-12)


def test_missing_weights_file_says_where_to_get_and_how_to_convert(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    dinov2.load_dinov2_params(tmp_path / 'dinov2_vitl14.npz')
  message = str(error.value)
  assert str(tmp_path / 'dinov2_vitl14.npz') in message
  assert dinov2.TORCH_WEIGHTS_URL in message and 'python -m cfg.evaluation.convert_dinov2' in message


def test_torch_weights_file_is_refused_with_the_convert_command(tmp_path):
  path = tmp_path / 'dinov2_vitl14_pretrain.pth'
  path.write_bytes(b'not read')
  with pytest.raises(ValueError, match='convert_dinov2'):
    dinov2.load_dinov2_params(path)


def test_weights_round_trip_through_npz_and_bad_shapes_are_named(tmp_path, fixture, small_variables):
  state_dict = _state_dict(fixture, 'small')
  path = tmp_path / 'weights.npz'
  np.savez(path, **state_dict)
  loaded = dinov2.load_dinov2_params(path, SMALL)
  np.testing.assert_array_equal(loaded['params']['blocks_1']['attn']['qkv']['kernel'],
                                state_dict['blocks.1.attn.qkv.weight'].T)
  state_dict['blocks.0.ls1.gamma'] = np.zeros(3, np.float32)
  np.savez(path, **state_dict)
  with pytest.raises(ValueError, match='blocks.0.ls1.gamma'):
    dinov2.load_dinov2_params(path, SMALL)
