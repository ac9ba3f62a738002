"""Writes tests/data/dinov2_fixture.npz: timm's and the official DINOv2 ViT on generated weights, fixed images.

Runs in a torch environment kept outside the repository (torch never enters .venv or requirements.txt),
with the official facebookresearch/dinov2 sources unpacked somewhere (only `dinov2/` is imported):

  python3 -m venv /work/torchvenv
  /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 numpy
  /work/torchvenv/bin/python experiments/dinov2_fixture.py --dinov2_src=/path/to/dinov2/checkout

Nothing is downloaded and nothing here imports the project: the weights are drawn here (numpy, seed 0)
and stored in the fixture with their torch names, so the test loads them through the port's own
state-dict mapping. Two tiny architectures of ViT-L/14's structure (patch 14, class token, LayerScale,
exact-GELU MLP, final LayerNorm):
  - `small`: embed 32, depth 2, 4 heads, position grid 5 (img_size 70), run by
      timm `vit_large_patch14_dinov2(embed_dim=32, depth=2, num_heads=4, img_size=70)` at 70 px, and by
      the official `DinoVisionTransformer` at 70, 42 (grid 5 → 3) and 98 px (5 → 7), given the network
      input (x / 255 − mean) / std of uint8 images of those sizes; and through EDM2's whole
      recipe (F.interpolate(bicubic, antialias=True) to 42 px, / 255, mean / std) from uint8 32×32 RGB,
      96×96 RGB and 28×28 grayscale images;
  - `geometry`: embed 16, depth 1, 2 heads, position grid 37 (ViT-L/14's 518 px), through EDM2's recipe
      at its real 224 px (grid 16: the 37 → 16 position resize of dinov2_vitl14) from 64×64 RGB images.
Outputs are the class token after the final norm (timm: `model(x)` with num_classes=0; official:
`x_norm_clstoken`, which the hub model returns). tests/test_dinov2.py compares the Flax port with them.
"""

import argparse
import os
import platform
import sys

import numpy as np
import timm
import torch
import torch.nn.functional as F

SEED = 0
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHITECTURES = {
    'small': dict(patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0, pos_grid=5),
    'geometry': dict(patch_size=14, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0, pos_grid=37),
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data',
                   'dinov2_fixture.npz')


def generated_state_dict(arch, rng):
  """DINOv2-named tensors, scaled so activations stay O(1) and every parameter matters."""
  d, p, m = arch['embed_dim'], arch['patch_size'], arch['pos_grid']
  hidden = int(d * arch['mlp_ratio'])
  normal = lambda shape, std: (std * rng.standard_normal(shape)).astype(np.float32)
  uniform = lambda shape, low, high: rng.uniform(low, high, shape).astype(np.float32)
  sd = {'cls_token': normal((1, 1, d), 0.5), 'pos_embed': normal((1, 1 + m * m, d), 0.5),
        'mask_token': normal((1, d), 0.5),
        'patch_embed.proj.weight': normal((d, 3, p, p), 1 / np.sqrt(3 * p * p)),
        'patch_embed.proj.bias': normal((d,), 0.1),
        'norm.weight': uniform((d,), 0.8, 1.2), 'norm.bias': normal((d,), 0.1)}
  for i in range(arch['depth']):
    b = f'blocks.{i}.'
    for name, (out, inp) in {'attn.qkv': (3 * d, d), 'attn.proj': (d, d), 'mlp.fc1': (hidden, d),
                             'mlp.fc2': (d, hidden)}.items():
      sd[b + name + '.weight'] = normal((out, inp), 1 / np.sqrt(inp))
      sd[b + name + '.bias'] = normal((out,), 0.1)
    for norm in ('norm1', 'norm2'):
      sd[b + norm + '.weight'] = uniform((d,), 0.8, 1.2)
      sd[b + norm + '.bias'] = normal((d,), 0.1)
    sd[b + 'ls1.gamma'] = uniform((d,), 0.5, 1.5)
    sd[b + 'ls2.gamma'] = uniform((d,), 0.5, 1.5)
  return sd


def official_model(arch, state_dict):
  from dinov2.models.vision_transformer import DinoVisionTransformer  # pylint: disable=g-import-not-at-top
  # Arguments of dinov2/hub/backbones.py's _make_dinov2_model (init_values only initialises γ).
  model = DinoVisionTransformer(
      img_size=arch['patch_size'] * arch['pos_grid'], patch_size=arch['patch_size'],
      embed_dim=arch['embed_dim'], depth=arch['depth'], num_heads=arch['num_heads'],
      mlp_ratio=arch['mlp_ratio'], init_values=1.0, ffn_layer='mlp', block_chunks=0,
      num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  return model.eval()


def timm_model(arch, state_dict):
  model = timm.create_model('vit_large_patch14_dinov2', pretrained=False, num_classes=0,
                            embed_dim=arch['embed_dim'], depth=arch['depth'],
                            num_heads=arch['num_heads'], img_size=arch['patch_size'] * arch['pos_grid'])
  # timm's own DINOv2 checkpoint filter drops mask_token; every other name is the official one.
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items() if k != 'mask_token'},
                        strict=True)
  return model.eval()


def fixed_images(height, width, channels, rng, count=2):
  """uint8 images: white noise, then smooth colour patterns with a little noise."""
  images = [rng.integers(0, 256, (height, width, channels), dtype=np.uint8)]
  yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing='ij')
  for k in range(count - 1):
    phases = np.arange(channels)[None, None, :] * 2.0 + k
    smooth = 127.5 + 100 * np.sin((6 + k) * xx[..., None] + 4 * yy[..., None] ** 2 + phases)
    images.append(np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).round().astype(np.uint8))
  return np.stack(images)


def nchw(images):
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  return x.expand(-1, 3, -1, -1)  # grayscale repeated to RGB


def normalise(x):
  """EDM2's dynamic range: x / 255, minus ImageNet mean, over std (x in [0, 255], NCHW)."""
  x = x / 255
  return (x - torch.tensor(MEAN).reshape(1, -1, 1, 1)) / torch.tensor(STD).reshape(1, -1, 1, 1)


def edm2_recipe(model, images, size):
  """EDM2 calculate_metrics.DINOv2Detector.__call__ with resize_mode='torch'."""
  x = F.interpolate(nchw(images), size=(size, size), mode='bicubic', antialias=True)
  return model(normalise(x))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dinov2_src', required=True,
                      help='folder holding the official dinov2/ package (facebookresearch/dinov2)')
  args = parser.parse_args()
  sys.path.insert(0, args.dinov2_src)
  torch.manual_seed(SEED)
  rng = np.random.default_rng(SEED)
  fixture = {}
  with torch.no_grad():
    arch = ARCHITECTURES['small']
    state_dict = generated_state_dict(arch, rng)
    official, timm_vit = official_model(arch, state_dict), timm_model(arch, state_dict)
    fixture.update({f'small/{k}': v for k, v in state_dict.items()})
    for side in (70, 42, 98):
      images = fixed_images(side, side, 3, rng)
      x = normalise(nchw(images))
      fixture[f'net{side}_images'] = images
      fixture[f'net{side}_official'] = official(x).numpy()
      if side == 70:  # timm resizes position embeddings differently, so only at the native grid
        fixture['net70_timm'] = timm_vit(x).numpy()
    for group, (h, w, c) in {'rgb32': (32, 32, 3), 'rgb96': (96, 96, 3), 'gray28': (28, 28, 1)}.items():
      images = fixed_images(h, w, c, rng)
      fixture[f'recipe_{group}_images'] = images
      fixture[f'recipe_{group}_official'] = edm2_recipe(official, images, 42).numpy()
    arch = ARCHITECTURES['geometry']
    state_dict = generated_state_dict(arch, rng)
    fixture.update({f'geometry/{k}': v for k, v in state_dict.items()})
    images = fixed_images(64, 64, 3, rng)
    fixture['geometry_rgb64_images'] = images
    fixture['geometry_rgb64_official'] = edm2_recipe(official_model(arch, state_dict), images, 224).numpy()
  print('timm vs official at the native grid:',
        float(np.abs(fixture['net70_timm'] - fixture['net70_official']).max()))
  fixture['versions'] = np.array(
      f'python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, '
      f'numpy {np.__version__}')
  np.savez_compressed(OUT, **fixture)
  print('wrote', os.path.normpath(OUT), os.path.getsize(OUT), 'bytes;', fixture['versions'])


if __name__ == '__main__':
  main()
