"""The FID InceptionV3 (TF 2015-12-05 graph as ported by pytorch-fid) in Flax: pool3, bias-free logits.

This is pytorch-fid's network, block for block, not torchvision's InceptionV3 (paper §7):
  - the pool branches of Mixed_5b–5d, 6b–6e and 7b average without counting padding (TF semantics);
  - Mixed_7c's pool branch is a 3×3 max pool (a quirk of the TF graph);
  - BatchNorm ε = 1e-3, 1008-way fc, no auxiliary head;
  - input resized to 299×299 bilinearly (half-pixel centres, no antialias), then scaled to [−1, 1].
Outputs: pool3 (2048-d, the FID features) and pool3 · W_fc, the logits without the fc bias, which the TF
graph and the ADM evaluator feed to the Inception Score; on request sFID's spatial features, the first 7
channels of Mixed_6d.branch1x1 (the TF graph's mixed_6/conv; see `SPATIAL_BLOCK`).

Weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth converted once to .npz by
`cfg.evaluation.convert_inception`; the .npz keeps pytorch-fid's state-dict names and torch layouts, and
`variables_from_state_dict` maps them onto this module. Convs and the fc run at HIGHEST precision so that
GPUs/TPUs do not silently use TF32/bf16 passes for FID features.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cfg import parallel
from cfg.evaluation import batches
from cfg.evaluation import synthetic_weights
from cfg.evaluation import torch_weights
from cfg.evaluation.convert_inception import CONVERT_COMMAND
from cfg.evaluation.convert_inception import TORCH_WEIGHTS_FILE
from cfg.evaluation.convert_inception import TORCH_WEIGHTS_URL

INCEPTION_IMAGE_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
# sFID (ADM evaluator): the TF graph's `mixed_6/conv:0`, first 7 channels, flattened: 17·17·7 = 2023.
# In pytorch-fid's module tree that tensor is the output of Mixed_6d.branch1x1 (conv → BN → ReLU):
#   - the TF graph names its eleven Inception blocks mixed, mixed_1, …, mixed_10 in order; they are
#     torchvision's Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c, so mixed_6 is the third 17×17
#     block, Mixed_6d;
#   - inside a block TF names the un-towered 1×1 branch `conv` and the others tower/…, tower_1/…,
#     tower_2/{pool, conv}; `mixed_6/conv` is the scope of that 1×1 conv (768 → 192 channels), and
#     its output tensor `mixed_6/conv:0` is the scope's last op, the ReLU after the batch norm.
# How sure: the block order and branch names are those of torch-fidelity's TF-graph converter
# (utils/util_convert_inception_weights.py maps mixed_6/conv/{conv2d_params, batchnorm} to
# Mixed_6d.branch1x1.{conv, bn}, and mixed_7/… to Mixed_6e); Mixed_6c and Mixed_6d have identical
# shapes, so a shape match alone could swap them, but both ports reproduce the TF graph's FID, which
# a swap of two 17×17 blocks would not. That `:0` is the ReLU output (not the batch norm's) rests on
# the 2015 graph's scope layout and was not checked against the graph here; ADM's `mu_s` is then
# ≥ 0 in every entry, which anyone with a reference batch can confirm. One public port takes
# Mixed_6e.branch1x1 instead; that contradicts the block order above. The spatial features of this
# port also inherit pytorch-fid's bilinear resize, so sFID, like FID, is close to but not the TF
# evaluator's number.
SPATIAL_BLOCK = 'Mixed_6d'
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS

_PRECISION = jax.lax.Precision.HIGHEST


def _pad(kernel_padding):
  """torch's symmetric (ph, pw) padding as Flax's ((ph, ph), (pw, pw))."""
  ph, pw = kernel_padding
  return ((ph, ph), (pw, pw))


class ConvBN(nn.Module):
  """relu(BN(conv(x))) with a bias-free conv and BN ε = 1e-3 (torchvision's BasicConv2d)."""
  features: int
  kernel_size: tuple = (1, 1)
  strides: tuple = (1, 1)
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=_pad(self.padding),
                use_bias=False, precision=_PRECISION, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_excluding_padding(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """Mixed_5b–5d: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg pool (padding not counted)→1×1."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(64, name='branch1x1')(x)
    branch5x5 = ConvBN(48, name='branch5x5_1')(x)
    branch5x5 = ConvBN(64, (5, 5), padding=(2, 2), name='branch5x5_2')(branch5x5)
    branch3x3dbl = ConvBN(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = ConvBN(self.pool_features, name='branch_pool')(_avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): 3×3/2 | 1×1→3×3→3×3/2 | max pool 3×3/2."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = ConvBN(384, (3, 3), strides=(2, 2), name='branch3x3')(x)
    branch3x3dbl = ConvBN(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), strides=(2, 2), name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b–6e: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg pool (padding not counted)→1×1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = ConvBN(192, name='branch1x1')(x)
    self.sow('intermediates', 'branch1x1_output', branch1x1)  # Mixed_6d's is sFID's mixed_6/conv
    branch7x7 = ConvBN(c7, name='branch7x7_1')(x)
    branch7x7 = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    branch7x7dbl = ConvBN(c7, name='branch7x7dbl_1')(x)
    branch7x7dbl = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = ConvBN(192, name='branch_pool')(_avg_pool_3x3_excluding_padding(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max pool 3×3/2."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = ConvBN(192, name='branch3x3_1')(x)
    branch3x3 = ConvBN(320, (3, 3), strides=(2, 2), name='branch3x3_2')(branch3x3)
    branch7x7x3 = ConvBN(192, name='branch7x7x3_1')(x)
    branch7x7x3 = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = ConvBN(192, (3, 3), strides=(2, 2), name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1; 7b averages, 7c max-pools."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    branch1x1 = ConvBN(320, name='branch1x1')(x)
    branch3x3 = ConvBN(384, name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate([
        ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
        ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3),
    ], axis=-1)
    branch3x3dbl = ConvBN(448, name='branch3x3dbl_1')(x)
    branch3x3dbl = ConvBN(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(branch3x3dbl),
        ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(branch3x3dbl),
    ], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_excluding_padding(x)
    branch_pool = ConvBN(192, name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FidInceptionV3(nn.Module):
  """x ∈ [−1, 1]^{B×299×299×3} ↦ (pool3 [B, 2048], pool3 · W_fc [B, 1008])."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), strides=(2, 2), name='Conv2d_1a_3x3')(x)
    x = ConvBN(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride_2(x)
    x = ConvBN(80, name='Conv2d_3b_1x1')(x)
    x = ConvBN(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride_2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, use_bias=False, precision=_PRECISION, name='fc')(pool3)
    return pool3, logits


# ---- images → network input ---------------------------------------------------------------------


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Expected images of shape [batch, height, width, 1 or 3] (NHWC), got '
                     f'{images.shape}; add a batch axis or move channels last.')
  if not (images.dtype == jnp.uint8 or jnp.issubdtype(images.dtype, jnp.floating)):
    raise ValueError(f'Expected uint8 images in [0, 255] or float images in [−1, 1], got dtype '
                     f'{images.dtype}.')


@parallel.jit
def preprocess_images(images):
  """uint8 [0, 255] or float [−1, 1], any H×W, 1 or 3 channels ↦ float32 [−1, 1] at 299×299×3.

  uint8 follows pytorch-fid exactly: x/255 ∈ [0, 1], bilinear resize, then 2x − 1 (the resize is affine
  invariant, so float input in [−1, 1] is resized directly). Grayscale is repeated to three channels.
  """
  _check_images(images)
  batch, height, width, channels = images.shape
  from_uint8 = images.dtype == jnp.uint8
  x = images.astype(jnp.float32) / 255.0 if from_uint8 else images.astype(jnp.float32)
  size = INCEPTION_IMAGE_SIZE
  if (height, width) != (size, size):
    x = jax.image.resize(x, (batch, size, size, channels), 'bilinear', antialias=False)
  if from_uint8:
    x = 2.0 * x - 1.0
  return jnp.broadcast_to(x, (batch, size, size, 3))


@functools.partial(parallel.jit, static_argnames='spatial')
def _network(variables, x, spatial=False):
  if not spatial:
    return FidInceptionV3().apply(variables, x)
  (pool3, logits), state = FidInceptionV3().apply(variables, x, mutable=['intermediates'])
  (mixed_6_conv,) = state['intermediates'][SPATIAL_BLOCK]['branch1x1_output']
  # ADM: spatial[..., :7] of the NHWC tensor, flattened per image (h, w, c order).
  return pool3, logits, mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)


def inception_features(variables, images, *, spatial=False):
  """(pool3 [B, 2048], bias-free logits [B, 1008]) of images (see `preprocess_images` for the input);
  with spatial=True also sFID's features [B, 2023] (see `SPATIAL_BLOCK`).

  Two jitted stages, so a new input size only recompiles the cheap resize, never the network
  (which recompiles per batch size; `compute_features` keeps that fixed).
  """
  return _network(variables, preprocess_images(images), spatial)


def compute_features(variables, image_batches, *, batch_size, spatial=False):
  """Host loop: concatenated numpy (pool3, logits[, spatial]) over image batches of ≤ batch_size.

  Short batches are padded to batch_size (and the padding dropped) so the network compiles once.
  """
  return batches.map_padded(functools.partial(inception_features, variables, spatial=spatial),
                            image_batches, batch_size=batch_size)


# ---- weights ------------------------------------------------------------------------------------

_FLAX_TO_TORCH_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
                       ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
                       ('batch_stats', 'var'): 'running_var'}


def _torch_name(flat_key):
  """('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') ↦ 'Mixed_5b.branch1x1.conv.weight'."""
  collection, *path, leaf = flat_key
  return '.'.join(path + [_FLAX_TO_TORCH_LEAF[(collection, leaf)]])


@functools.cache
def _abstract_variables():
  x = jax.ShapeDtypeStruct((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(FidInceptionV3().init, jax.random.key(0), x)


def _flax_shapes():
  return {key: leaf.shape for key, leaf in traverse_util.flatten_dict(_abstract_variables()).items()}


def expected_state_dict_shapes():
  """{pytorch-fid state-dict name: torch-layout shape} for every tensor this module uses."""
  return {_torch_name(key): torch_weights.torch_layout_shape(shape)
          for key, shape in _flax_shapes().items()}


def variables_from_state_dict(state_dict):
  """Flax variables from {pytorch-fid name: torch-layout array} (fc.bias and BN counters unused)."""
  arrays = torch_weights.arrays_from_state_dict(
      state_dict, _flax_shapes(), _torch_name, network='Inception',
      hint=f'convert {TORCH_WEIGHTS_FILE} with `{CONVERT_COMMAND}`')
  return traverse_util.unflatten_dict({key: jnp.asarray(array) for key, array in arrays.items()})


def load_inception_params(path):
  """Flax variables of the FID InceptionV3 from the .npz written by `convert_inception`."""
  return variables_from_state_dict(torch_weights.read_converted_npz(
      path, network='Inception', url=TORCH_WEIGHTS_URL, convert_command=CONVERT_COMMAND))


def synthetic_inception_variables(*, seed=0):
  """Flax variables filled by `synthetic_weights` (tests and benchmarks only; not the FID weights)."""
  shapes = expected_state_dict_shapes()
  return variables_from_state_dict(synthetic_weights.synthetic_state_dict(shapes, seed=seed))
