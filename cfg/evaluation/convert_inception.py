"""Converts pytorch-fid's FID Inception weights to a torch-free .npz, once (this command needs torch).

  python -m cfg.evaluation.convert_inception \
      --torch_weights=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

The .npz keeps the state dict's names and torch layouts; `cfg.evaluation.inception.load_inception_params`
maps them onto the Flax module and checks every name and shape. Only this file imports torch, and only
inside `convert`, so the rest of the project (and this module's import) runs without it.
"""

import sys

import numpy as np

from cfg.evaluation.torch_weights import converter_main
from cfg.evaluation.torch_weights import file_sha256

TORCH_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
TORCH_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                     + TORCH_WEIGHTS_FILE)
CONVERT_COMMAND = ('python -m cfg.evaluation.convert_inception '
                   f'--torch_weights={TORCH_WEIGHTS_FILE} --out=inception_fid.npz')
# torch hub names a file <name>-<first 8 hex digits of its sha256>.pth.
EXPECTED_SHA256_PREFIX = '6726825d'


def state_dict_to_arrays(state_dict):
  """{name: float32 numpy array} of a torch state dict, without BatchNorm's batch counters."""
  arrays = {name: tensor.detach().cpu().numpy().astype(np.float32)
            for name, tensor in state_dict.items() if not name.endswith('num_batches_tracked')}
  fc_shape = arrays['fc.weight'].shape if 'fc.weight' in arrays else None
  if fc_shape != (1008, 2048) or 'Mixed_7c.branch_pool.conv.weight' not in arrays:
    raise ValueError(f'This is not the FID Inception state dict (fc.weight shape {fc_shape}, expected '
                     f'(1008, 2048)); use {TORCH_WEIGHTS_FILE} from {TORCH_WEIGHTS_URL}.')
  return arrays


def convert(*, torch_weights, out):
  """Writes out (.npz) from torch_weights (.pth); returns the sha256 of the .pth."""
  import torch  # pylint: disable=g-import-not-at-top

  sha256 = file_sha256(torch_weights)
  if not sha256.startswith(EXPECTED_SHA256_PREFIX):
    print(f'warning: sha256 {sha256[:16]}… of {torch_weights} does not start with '
          f'{EXPECTED_SHA256_PREFIX} like {TORCH_WEIGHTS_FILE}; FID from it will not be comparable.',
          file=sys.stderr)
  state_dict = torch.load(torch_weights, map_location='cpu', weights_only=True)
  np.savez(out, **state_dict_to_arrays(state_dict))
  return sha256


def main(argv=None):
  converter_main(convert, description=__doc__.splitlines()[0], weights_file=TORCH_WEIGHTS_FILE,
                 argv=argv)


if __name__ == '__main__':
  main()
