"""Writes tests/data/inception_spatial_fixture.npz: sFID's spatial features from pytorch-fid's own network.

Same torch environment and generated weights as experiments/inception_fixture.py (which it imports), on
the images stored in tests/data/inception_fixture.npz:

  /work/torchvenv/bin/python experiments/inception_spatial_fixture.py

A forward hook on pytorch-fid's module `Mixed_6d.branch1x1` (conv → BN → ReLU, [B, 192, 17, 17], the TF
graph's mixed_6/conv; see cfg/evaluation/inception.py) records its output; as ADM's evaluator does with
the NHWC TF tensor, the first 7 channels are kept and each image flattened in (h, w, c) order → 2023-d.
"""

import os
import sys
from unittest import mock

import numpy as np
import pytorch_fid.inception
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inception_fixture  # pylint: disable=g-import-not-at-top

MODULE = ('Mixed_6d', 'branch1x1')
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data')


def main():
  # InceptionV3 regroups the blocks into numbered Sequentials, so take the module by its torchvision
  # name from the network fid_inception_v3() builds inside it.
  built = []
  original = pytorch_fid.inception.fid_inception_v3
  with mock.patch.object(pytorch_fid.inception, 'fid_inception_v3',
                         lambda: built.append(original()) or built[-1]):
    model, _ = inception_fixture.build_pytorch_fid_inception(inception_fixture.SEED)
  module = getattr(getattr(built[0], MODULE[0]), MODULE[1])
  assert any(m is module for m in model.modules())
  recorded = []
  module.register_forward_hook(lambda _, __, output: recorded.append(output))
  with np.load(os.path.join(DATA, 'inception_fixture.npz')) as npz:
    images = {group: npz[f'images_{group}'] for group in inception_fixture.IMAGE_GROUPS}
  fixture = {'module': np.array('.'.join(MODULE))}
  for group, batch in images.items():
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    recorded.clear()
    with torch.no_grad():
      model(x.expand(-1, 3, -1, -1))
    (output,) = recorded
    nhwc = output.permute(0, 2, 3, 1)[..., :7]
    fixture[f'spatial_{group}'] = nhwc.reshape(nhwc.shape[0], -1).numpy()
    print(group, tuple(output.shape), '→', fixture[f'spatial_{group}'].shape)
  out = os.path.join(DATA, 'inception_spatial_fixture.npz')
  np.savez_compressed(out, **fixture)
  print('wrote', os.path.normpath(out), os.path.getsize(out), 'bytes')


if __name__ == '__main__':
  main()
