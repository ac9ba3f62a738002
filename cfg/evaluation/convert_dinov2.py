"""Converts the official DINOv2 ViT-L/14 weights to a torch-free .npz, once (this command needs torch).

  python -m cfg.evaluation.convert_dinov2 \
      --torch_weights=dinov2_vitl14_pretrain.pth --out=dinov2_vitl14.npz

The file is the one `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')` downloads, which EDM2's
FD_DINOv2 uses. The .npz keeps the state dict's names and torch layouts (timm's DINOv2 models use the same
names); `cfg.evaluation.dinov2.load_dinov2_params` maps them onto the Flax module and checks every name
and shape. Only this file imports torch, and only inside `convert`.
"""

import numpy as np

from cfg.evaluation.torch_weights import converter_main
from cfg.evaluation.torch_weights import file_sha256

TORCH_WEIGHTS_FILE = 'dinov2_vitl14_pretrain.pth'
TORCH_WEIGHTS_URL = 'https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/' + TORCH_WEIGHTS_FILE
CONVERT_COMMAND = ('python -m cfg.evaluation.convert_dinov2 '
                   f'--torch_weights={TORCH_WEIGHTS_FILE} --out=dinov2_vitl14.npz')
VIT_L14_EMBED_DIM = 1024


def state_dict_to_arrays(state_dict):
  """{name: float32 numpy array} of a DINOv2 state dict; refuses a checkpoint of another model."""
  arrays = {name: tensor.detach().cpu().float().numpy() for name, tensor in state_dict.items()}
  cls_shape = arrays['cls_token'].shape if 'cls_token' in arrays else None
  if cls_shape != (1, 1, VIT_L14_EMBED_DIM) or 'blocks.23.ls2.gamma' not in arrays:
    raise ValueError(f'This is not the DINOv2 ViT-L/14 state dict (cls_token shape {cls_shape}, '
                     f'expected (1, 1, {VIT_L14_EMBED_DIM}), and 24 LayerScale blocks); use '
                     f'{TORCH_WEIGHTS_FILE} from {TORCH_WEIGHTS_URL}.')
  return arrays


def convert(*, torch_weights, out):
  """Writes out (.npz) from torch_weights (.pth); returns the sha256 of the .pth."""
  import torch  # pylint: disable=g-import-not-at-top

  state_dict = torch.load(torch_weights, map_location='cpu', weights_only=True)
  np.savez(out, **state_dict_to_arrays(state_dict))
  return file_sha256(torch_weights)


def main(argv=None):
  converter_main(convert, description=__doc__.splitlines()[0], weights_file=TORCH_WEIGHTS_FILE,
                 argv=argv)


if __name__ == '__main__':
  main()
