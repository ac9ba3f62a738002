"""Inception feature throughput (images/s at 299×299): Flax port next to pytorch-fid, same images, one run.

  .venv/bin/python experiments/bench_inception.py [--batch_size=8 --repeats=3 \
      --torch_python=/work/torchvenv/bin/python]

Both networks carry the same synthetic weights (cfg.evaluation.synthetic_weights), so no download is
needed; throughput does not depend on the weight values. The Flax side runs here; pytorch-fid runs in this
interpreter if it has torch, else in --torch_python (a venv with torch, torchvision and pytorch-fid, kept
out of the repository, see experiments/inception_fixture.py), fed the same uint8 images through an .npz.
The first (compiling / warm-up) batch is not timed. Results go to stdout as one line per side plus the
ratio; nothing is asserted.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fixed_images(batch_size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch_size, 299, 299, 3), dtype=np.uint8)


def time_batches(run, repeats):
  """images/s of `run()` (one batch) over `repeats` timed calls after one untimed warm-up call."""
  run()
  start = time.perf_counter()
  for _ in range(repeats):
    run()
  return time.perf_counter() - start


def flax_throughput(images, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  from cfg.evaluation import inception  # pylint: disable=g-import-not-at-top

  variables = inception.synthetic_inception_variables()
  run = lambda: jax.block_until_ready(inception.inception_features(variables, images))
  seconds = time_batches(run, repeats)
  return {'side': f'flax (jax {jax.__version__}, {jax.devices()[0].platform})',
          'images_per_s': repeats * len(images) / seconds}


def torch_throughput(images, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  import inception_fixture  # pylint: disable=g-import-not-at-top

  model, _ = inception_fixture.build_pytorch_fid_inception()
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0

  def run():
    with torch.inference_mode():
      return model(x)[0]

  seconds = time_batches(run, repeats)
  return {'side': f'pytorch-fid (torch {torch.__version__}, {torch.get_num_threads()} threads)',
          'images_per_s': repeats * len(images) / seconds}


def torch_in_subprocess(images, repeats, torch_python):
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'images.npz')
    np.savez(path, images=images)
    result = subprocess.run([torch_python, os.path.abspath(__file__), '--side=torch',
                             f'--images={path}', f'--repeats={repeats}'],
                            capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--torch_python', default='/work/torchvenv/bin/python')
  parser.add_argument('--side', choices=['both', 'torch'], default='both', help=argparse.SUPPRESS)
  parser.add_argument('--images', help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.side == 'torch':  # the child process: print one JSON line
    with np.load(args.images) as npz:
      print(json.dumps(torch_throughput(npz['images'], args.repeats)))
    return

  images = fixed_images(args.batch_size)
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; batch '
        f'{args.batch_size} × {args.repeats} timed batches of uint8 299×299×3 images')
  ours = flax_throughput(images, args.repeats)
  print(f'{ours["side"]}: {ours["images_per_s"]:.2f} images/s')
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    theirs = torch_throughput(images, args.repeats)
  except ImportError:
    if not os.path.exists(args.torch_python):
      print(f'pytorch-fid: skipped (no torch here and no {args.torch_python})')
      return
    theirs = torch_in_subprocess(images, args.repeats, args.torch_python)
  print(f'{theirs["side"]}: {theirs["images_per_s"]:.2f} images/s')
  print(f'ratio flax / pytorch-fid: {ours["images_per_s"] / theirs["images_per_s"]:.2f}×')


if __name__ == '__main__':
  main()
