"""DINOv2 ViT in Flax for FD_DINOv2, with EDM2's recipe (Karras et al. 2024, `calculate_metrics.py`).

EDM2 scores images with the official `torch.hub` model `dinov2_vitl14` (facebookresearch/dinov2):
  - uint8 images [0, 255] resized to 224×224 by `F.interpolate(mode='bicubic', antialias=True)` (no
    rounding), then x / 255, minus ImageNet mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225);
  - features: the class token after the final LayerNorm (`x_norm_clstoken`, 1024-d for ViT-L/14);
  - statistics in float64 (mean and the N − 1 covariance, as `metrics.feature_statistics`).
The network is ViT-L/14 with LayerScale: patch embedding (14×14 conv, stride 14), class token, learned
position embedding for a 37×37 grid (518 px) plus the class token, 24 pre-norm blocks
x += γ₁·Attn(LN(x)); x += γ₂·MLP(LN(x)) (16 heads, qkv bias, MLP 4096 with exact GELU, LayerNorm ε = 1e-6),
a final LayerNorm. At 224 px the grid is 16×16, and the 37×37 patch position embedding is resized the way
DINOv2's `interpolate_pos_encoding` does: bicubic, antialias=False, scale_factor = (16 + 0.1)/37 (its
"interpolate_offset"; timm resizes to the size with antialias=True instead, which differs).

`DinoV2` takes the architecture as fields, so tests run a tiny ViT of the same structure; `VIT_L14` is
EDM2's. Weights: the official `dinov2_vitl14_pretrain.pth`, converted once to .npz by
`cfg.evaluation.convert_dinov2`; the .npz keeps the torch names and layouts (as timm's DINOv2 models do).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cfg.evaluation import batches
from cfg.evaluation import torch_resize
from cfg.evaluation import torch_weights
from cfg.evaluation.convert_dinov2 import CONVERT_COMMAND
from cfg.evaluation.convert_dinov2 import TORCH_WEIGHTS_URL

IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# dinov2_vitl14: embed 1024, depth 24, 16 heads, patch 14, position grid 37 (img_size 518).
VIT_L14 = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, pos_grid=37)

_PRECISION = jax.lax.Precision.HIGHEST


class LayerScale(nn.Module):
  """x · γ, γ ∈ R^D (DINOv2's ls1 / ls2)."""

  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.ones, (x.shape[-1],))


class Attention(nn.Module):
  """softmax(q kᵀ / √d_head) v over heads, from one qkv projection (DINOv2 / timm layout [q | k | v])."""
  num_heads: int

  @nn.compact
  def __call__(self, x):
    batch, tokens, dim = x.shape
    qkv = nn.Dense(3 * dim, precision=_PRECISION, name='qkv')(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, d]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=_PRECISION) / math.sqrt(dim // self.num_heads)
    out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, axis=-1), v, precision=_PRECISION)
    return nn.Dense(dim, precision=_PRECISION, name='proj')(out.reshape(batch, tokens, dim))


class Mlp(nn.Module):
  """fc2(GELU(fc1 x)) with the exact (erf) GELU of torch's nn.GELU()."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(self.hidden, precision=_PRECISION, name='fc1')(x), approximate=False)
    return nn.Dense(x.shape[-1], precision=_PRECISION, name='fc2')(h)


class Block(nn.Module):
  """x + γ₁·Attn(LN₁ x), then + γ₂·MLP(LN₂ x)."""
  num_heads: int
  mlp_ratio: float

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6)
    x = x + LayerScale(name='ls1')(Attention(self.num_heads, name='attn')(norm(name='norm1')(x)))
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + LayerScale(name='ls2')(Mlp(hidden, name='mlp')(norm(name='norm2')(x)))


def position_resize_matrix(pos_grid, grid):
  """R [grid, pos_grid]: DINOv2's bicubic resize of the position grid, scale_factor (grid + 0.1)/M."""
  if grid == pos_grid:
    return np.eye(grid)  # interpolate_pos_encoding returns the embedding unchanged
  return torch_resize.bicubic_matrix(pos_grid, grid, scale_factor=(grid + 0.1) / pos_grid)


class DinoV2(nn.Module):
  """x [B, H, W, 3] (normalised, H and W multiples of patch_size) ↦ class token after the final norm."""
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float
  pos_grid: int  # the position embedding's grid side M (img_size / patch_size when trained)

  @nn.compact
  def __call__(self, x):
    batch, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f'DINOv2 input {height}×{width} is not a multiple of the patch size '
                       f'{self.patch_size}.')
    p = self.patch_size
    patches = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', precision=_PRECISION,
                      name='patch_embed_proj')(x)
    grid_h, grid_w = patches.shape[1:3]
    cls_token = self.param('cls_token', nn.initializers.zeros, (1, 1, self.embed_dim))
    pos_embed = self.param('pos_embed', nn.initializers.zeros,
                           (1, 1 + self.pos_grid ** 2, self.embed_dim))
    patch_pos = pos_embed[0, 1:].reshape(self.pos_grid, self.pos_grid, self.embed_dim)
    patch_pos = jnp.einsum('hm,wn,mnd->hwd', position_resize_matrix(self.pos_grid, grid_h),
                           position_resize_matrix(self.pos_grid, grid_w), patch_pos,
                           precision=_PRECISION)
    tokens = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, self.embed_dim)),
                              patches.reshape(batch, grid_h * grid_w, self.embed_dim)], axis=1)
    tokens = tokens + jnp.concatenate([pos_embed[:, :1], patch_pos.reshape(1, -1, self.embed_dim)], 1)
    for index in range(self.depth):
      tokens = Block(self.num_heads, self.mlp_ratio, name=f'blocks_{index}')(tokens)
    return nn.LayerNorm(epsilon=1e-6, name='norm')(tokens)[:, 0]


# ---- images → network input ---------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames='image_size')
def preprocess_images(images, *, image_size=IMAGE_SIZE):
  """uint8 [0, 255] (or float [−1, 1]) NHWC, 1 or 3 channels ↦ EDM2's normalised 224×224×3 input.

  Resize on the [0, 255] values with torch's antialiased bicubic (`torch_resize`), no rounding or
  clipping (as EDM2's default resize_mode='torch'); then (x / 255 − mean) / std per channel.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Expected images of shape [batch, height, width, 1 or 3] (NHWC), got '
                     f'{images.shape}.')
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.float32)
  elif jnp.issubdtype(images.dtype, jnp.floating):
    x = (images.astype(jnp.float32) + 1.0) * 127.5
  else:
    raise ValueError(f'Expected uint8 images in [0, 255] or float images in [−1, 1], got dtype '
                     f'{images.dtype}.')
  _, height, width, _ = x.shape
  resize_h = torch_resize.antialiased_bicubic_matrix(height, image_size)
  resize_w = torch_resize.antialiased_bicubic_matrix(width, image_size)
  x = jnp.einsum('ph,qw,bhwc->bpqc', resize_h, resize_w, x, precision=_PRECISION)
  x = jnp.broadcast_to(x, x.shape[:3] + (3,))
  return (x / 255.0 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


@functools.partial(jax.jit, static_argnames='architecture')
def _network(variables, x, architecture):
  return DinoV2(**dict(architecture)).apply(variables, x)


def dinov2_features(variables, images, *, architecture=VIT_L14, image_size=IMAGE_SIZE):
  """Class-token features [B, embed_dim] of uint8 images, EDM2's FD_DINOv2 recipe."""
  x = preprocess_images(images, image_size=image_size)
  return _network(variables, x, tuple(sorted(architecture.items())))


def compute_features(variables, image_batches, *, batch_size, architecture=VIT_L14,
                     image_size=IMAGE_SIZE):
  """Host loop: concatenated numpy features over image batches of ≤ batch_size (padded: one compile)."""
  features = lambda images: (dinov2_features(variables, images, architecture=architecture,
                                             image_size=image_size),)
  return batches.map_padded(features, image_batches, batch_size=batch_size)[0]


# ---- weights ------------------------------------------------------------------------------------


def _torch_name(flat_key):
  """('params', 'blocks_3', 'attn', 'qkv', 'kernel') ↦ 'blocks.3.attn.qkv.weight'."""
  _, *path, leaf = flat_key
  path = [part.replace('blocks_', 'blocks.').replace('patch_embed_proj', 'patch_embed.proj')
          for part in path]
  if leaf in ('cls_token', 'pos_embed'):
    return leaf
  return '.'.join(path + [{'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)])


@functools.cache
def _abstract_variables(architecture):
  architecture = dict(architecture)
  side = architecture['patch_size'] * architecture['pos_grid']
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  return jax.eval_shape(DinoV2(**architecture).init, jax.random.key(0), x)


def _flax_shapes(architecture):
  flat = traverse_util.flatten_dict(_abstract_variables(tuple(sorted(architecture.items()))))
  return {key: leaf.shape for key, leaf in flat.items()}


def expected_state_dict_shapes(architecture=VIT_L14):
  """{torch state-dict name: torch-layout shape} of every tensor the port uses."""
  return {_torch_name(key): torch_weights.torch_layout_shape(shape)
          for key, shape in _flax_shapes(architecture).items()}


def variables_from_state_dict(state_dict, architecture=VIT_L14):
  """Flax variables from {DINOv2 / timm name: torch-layout array}; the mask token is unused."""
  arrays = torch_weights.arrays_from_state_dict(
      state_dict, _flax_shapes(architecture), _torch_name, network='DINOv2',
      hint=f'convert the official checkpoint with `{CONVERT_COMMAND}`')
  return traverse_util.unflatten_dict({key: jnp.asarray(array) for key, array in arrays.items()})


def architecture_of(state_dict):
  """The `DinoV2` fields a state dict's shapes imply. Heads are not in the shapes: every DINOv2 ViT uses
  64-d heads (S/14: 6 heads of 384, B: 12 of 768, L: 16 of 1024, g: 24 of 1536), so num_heads = D / 64."""
  embed_dim = int(state_dict['cls_token'].shape[-1])
  depth = 1 + max(int(name.split('.')[1]) for name in state_dict if name.startswith('blocks.'))
  return dict(patch_size=int(state_dict['patch_embed.proj.weight'].shape[-1]), embed_dim=embed_dim,
              depth=depth, num_heads=max(1, embed_dim // 64),
              mlp_ratio=state_dict['blocks.0.mlp.fc1.weight'].shape[0] / embed_dim,
              pos_grid=int(round(math.sqrt(state_dict['pos_embed'].shape[1] - 1))))


def load_dinov2_weights(path):
  """(Flax variables, architecture) of the DINOv2 ViT in a converted .npz (ViT-L/14 for EDM2's recipe)."""
  state_dict = torch_weights.read_converted_npz(
      path, network='DINOv2', url=TORCH_WEIGHTS_URL, convert_command=CONVERT_COMMAND)
  architecture = architecture_of(state_dict)
  return variables_from_state_dict(state_dict, architecture), architecture


def load_dinov2_params(path, architecture=VIT_L14):
  """Flax variables of DINOv2 from the .npz written by `convert_dinov2`."""
  return variables_from_state_dict(torch_weights.read_converted_npz(
      path, network='DINOv2', url=TORCH_WEIGHTS_URL, convert_command=CONVERT_COMMAND), architecture)
