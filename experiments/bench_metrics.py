"""What the small-sample tools and FD_DINOv2 cost on this machine, for a given sample count and dimension.

  .venv/bin/python experiments/bench_metrics.py [--num=256,1024 --dim=128 --resamples=200 \
      --prdc_num=1024 --dinov2_images=2]

For each sample count N (features of dimension --dim): one Fréchet distance, the basic-bootstrap interval
with --resamples resamples, FD∞ at 15 subset sizes, and PRDC against a reference set of the same size.
The bootstrap costs resamples · N · D² multiply-adds, so its time at other sizes scales from the printed
per-resample time. Then DINOv2 ViT-L/14 features at 224 px (EDM2's recipe, generated weights: the cost
does not depend on their values), first batch (compile) and a second batch timed apart. Prints; asserts
nothing.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cfg.evaluation import dinov2  # pylint: disable=g-import-not-at-top
from cfg.evaluation import metrics  # pylint: disable=g-import-not-at-top


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def bench_frechet(num, dim, resamples, rng):
  features = rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim)
  reference = rng.standard_normal((max(num, 2 * dim), dim))
  mu_ref, sigma_ref = metrics.feature_statistics(reference)
  mu, sigma = metrics.feature_statistics(features)
  _, fd_s = timed(lambda: metrics.frechet_distance(mu1=mu, sigma1=sigma, mu2=mu_ref, sigma2=sigma_ref))
  interval, boot_s = timed(lambda: metrics.frechet_distance_bootstrap(
      features=features, mu_ref=mu_ref, sigma_ref=sigma_ref, num_resamples=resamples))
  infinity, inf_s = timed(lambda: metrics.frechet_distance_infinity(
      features=features, mu_ref=mu_ref, sigma_ref=sigma_ref))
  print(f'N={num} D={dim}: FD {interval.fd:.3f} in {fd_s:.3f} s; 95% interval [{interval.low:.3f}, '
        f'{interval.high:.3f}] from {resamples} resamples in {boot_s:.2f} s '
        f'({1e3 * boot_s / resamples:.2f} ms per resample); FD∞ {infinity.fd_infinity:.3f} in {inf_s:.2f} s')


def bench_prdc(num, dim, rng):
  real, fake = rng.standard_normal((num, dim)), rng.standard_normal((num, dim)) + 0.1
  metrics.prdc(real_features=real[:8], fake_features=fake[:8], k=5)  # compile the small blocks first
  result, seconds = timed(lambda: metrics.prdc(real_features=real, fake_features=fake, k=5))
  print(f'PRDC N={num} D={dim}: {seconds:.2f} s (includes compiling its [1000, N] blocks); '
        + ', '.join(f'{name} {value:.3f}' for name, value in result.items()))


def bench_dinov2(count):
  shapes = dinov2.expected_state_dict_shapes()
  rng = np.random.default_rng(0)
  state_dict = {name: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
                for name, shape in shapes.items()}
  variables = dinov2.variables_from_state_dict(state_dict)
  images = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
  run = lambda: np.asarray(dinov2.dinov2_features(variables, images))
  _, first_s = timed(run)
  features, second_s = timed(run)
  print(f'DINOv2 ViT-L/14 at 224 px, batch {count} of 64×64 images: first call (compile + run) '
        f'{first_s:.1f} s, second {second_s:.1f} s = {count / second_s:.2f} images/s; '
        f'features {features.shape}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num', default='256,1024', help='comma-separated sample counts')
  parser.add_argument('--dim', type=int, default=128, help='feature dimension (fd_fmnist: 128)')
  parser.add_argument('--resamples', type=int, default=200)
  parser.add_argument('--prdc_num', type=int, default=1024)
  parser.add_argument('--dinov2_images', type=int, default=2, help='0 skips DINOv2')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print('load average', os.getloadavg())
  for num in (int(n) for n in args.num.split(',')):
    bench_frechet(num, args.dim, args.resamples, rng)
  bench_prdc(args.prdc_num, args.dim, rng)
  if args.dinov2_images:
    bench_dinov2(args.dinov2_images)


if __name__ == '__main__':
  main()
