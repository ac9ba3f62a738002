"""PyTorch weights for the evaluation networks' Flax ports: layouts, the converted .npz, the converters' CLI.

numpy only (no torch, no JAX), so the one-time converters run in a torch environment without JAX and
the ports load the .npz without torch. Layouts: a conv kernel is torch [out, in, kh, kw] and Flax
[kh, kw, in, out]; a dense kernel torch [out, in] and Flax [in, out]; everything else is shared.
"""

import argparse
import hashlib
import os

import numpy as np

from cfg import files
from cfg.errors import MissingInputError


def file_sha256(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def torch_layout_shape(flax_shape):
  """Conv [kh, kw, in, out] ↦ [out, in, kh, kw]; dense [in, out] ↦ [out, in]; other shapes as they are."""
  if len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def from_torch_layout(array):
  """Inverse of `torch_layout_shape` on the values."""
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return np.transpose(array)
  return array


def arrays_from_state_dict(state_dict, flax_shapes, torch_name, *, network, hint):
  """{flat Flax key: float32 array in Flax layout} from {torch name: torch-layout array}.

  flax_shapes maps each flat key to its Flax shape and torch_name maps a key to its state-dict name;
  a missing tensor or a wrong shape raises one ValueError that names it (hint says how to fix it).
  """
  missing = [torch_name(key) for key in flax_shapes if torch_name(key) not in state_dict]
  if missing:
    raise ValueError(f'{network} weights lack {len(missing)} of {len(flax_shapes)} tensors, e.g. '
                     f'{missing[:3]}; {hint}.')
  arrays = {}
  for key, shape in flax_shapes.items():
    name = torch_name(key)
    array = np.asarray(state_dict[name], dtype=np.float32)
    if array.shape != torch_layout_shape(shape):
      raise ValueError(f'{network} weight {name} has shape {array.shape}, expected '
                       f'{torch_layout_shape(shape)} (torch layout).')
    arrays[key] = from_torch_layout(array)
  return arrays


def read_converted_npz(path, *, network, url, convert_command):
  """{name: array} of a converted .npz; a .pth or a missing file raises with the download and convert."""
  path = os.fspath(path)
  how = (f'Download {url} and convert it once (needs torch) with `{convert_command}`, '
         f'then point the {network} weights path at the .npz.')
  if path.endswith('.pth'):
    raise ValueError(f'{path} is the PyTorch weights file; this network reads the converted .npz. {how}')
  if not files.path(path).exists():
    raise MissingInputError(f'No {network} weights at {path}. {how}')
  return files.load_npz(path)


def converter_main(convert, *, description, weights_file, argv=None):
  """`--torch_weights=… --out=…` → convert(torch_weights=…, out=…), which returns the .pth's sha256."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--torch_weights', required=True, help=f'path to {weights_file}')
  parser.add_argument('--out', required=True, help='path of the .npz to write')
  args = parser.parse_args(argv)
  sha256 = convert(torch_weights=args.torch_weights, out=args.out)
  print(f'wrote {args.out} from {args.torch_weights} (sha256 {sha256})')
