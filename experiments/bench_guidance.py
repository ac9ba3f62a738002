"""Solvers at one NFE budget, and whether the guidance interval's skipped call is really skipped.

(a) every sampler with CFG at the same unguided budget of N network evaluations per image (ancestral
    T = N, ddim / dpmpp_2m T = N + 1, heun T = N/2 + 1; guided, each costs 2N): time per image and
    NFE per image, counted by `samplers.count_evaluations`;
(b) DDIM with `interval` vs `cfg` at the same T: the wall-time ratio next to the NFE ratio. They
    agree when the unconditional half of the 2B call is really not executed outside the interval.

The network is a small 28×28 U-Net with random weights. Timings: one warm-up call each, then repeats
interleaved (A, B, A, B, …); a ratio is the median over repeats of A/B within one repeat.

  .venv/bin/python experiments/bench_guidance.py [--batch 16 --nfe 16 --interval_steps 33 --repeats 5]
"""

import argparse
import functools
import os
import statistics
import sys

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cfg import samplers  # pylint: disable=g-import-not-at-top
from cfg.guidance import GuidanceParams  # pylint: disable=g-import-not-at-top
from cfg.models.unet import UNet  # pylint: disable=g-import-not-at-top
from experiments.bench_sampler import paired_ratio, set_up, wall_seconds  # pylint: disable=g-import-not-at-top

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SAMPLERS = ('ancestral', 'ddim', 'dpmpp_2m', 'heun')


def make_model():
  return UNet(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,),
              head_channels=16, dropout=0.0, num_classes=NUM_CLASSES, norm_groups=8)


def make_sampler(model, *, sampler, method, num_steps):
  """jit(params, key, labels, guidance params) -> x̂; the network parameters are an argument."""

  def sample(params, key, labels, guidance_params):
    return samplers.sample(functools.partial(model.apply, params), key=key, labels=labels,
                           params=guidance_params, image_shape=IMAGE_SHAPE, num_steps=num_steps,
                           null_label=NUM_CLASSES, method=method, solver=sampler)

  return jax.jit(sample)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--nfe', type=int, default=16, help='unguided evaluations per image for (a)')
  parser.add_argument('--interval_steps', type=int, default=33, help='T for (b)')
  parser.add_argument('--logsnr_lo', type=float, default=-1.0, help='interval for (b)')
  parser.add_argument('--logsnr_hi', type=float, default=2.0)
  parser.add_argument('--repeats', type=int, default=5)
  flags = parser.parse_args()

  model = make_model()
  key, labels, params = set_up(model, flags.batch, 'channels 16/32')

  # (a) every sampler at one budget.
  guided = GuidanceParams(w=1.0)
  calls, nfe = {}, {}
  for name in SAMPLERS:
    steps = samplers.num_steps_for_nfe(name, flags.nfe)
    fn = make_sampler(model, sampler=name, method='cfg', num_steps=steps)
    calls[name] = functools.partial(fn, params, key, labels, guided)
    nfe[name] = (steps, samplers.count_evaluations(solver=name, method='cfg', num_steps=steps))
  times = wall_seconds(calls, flags.repeats)
  print(f'(a) CFG w = 1 at an unguided budget of {flags.nfe} evaluations per image:')
  print('    | sampler | T | NFE / image (main + guiding) | ms / image |')
  print('    |---|---|---|---|')
  for name in SAMPLERS:
    steps, count = nfe[name]
    per_image = 1e3 * statistics.median(times[name]) / flags.batch
    print(f'    | {name} | {steps} | {count.total} ({count.main} + {count.ref}) | {per_image:.2f} |')

  # (b) interval vs cfg: wall-time ratio next to NFE ratio.
  steps = flags.interval_steps
  interval = GuidanceParams(w=1.0, logsnr_lo=flags.logsnr_lo, logsnr_hi=flags.logsnr_hi)
  counts = {m: samplers.count_evaluations(solver='ddim', method=m, num_steps=steps, params=interval)
            for m in ('interval', 'cfg')}
  fns = {m: make_sampler(model, sampler='ddim', method=m, num_steps=steps) for m in counts}
  times = wall_seconds({m: functools.partial(fns[m], params, key, labels, interval) for m in fns},
                       flags.repeats)
  time_ratio = paired_ratio(times['interval'], times['cfg'])
  nfe_ratio = counts['interval'].total / counts['cfg'].total
  print(f'(b) DDIM T={steps}, interval λ ∈ [{flags.logsnr_lo:g}, {flags.logsnr_hi:g}] '
        f'({counts["interval"].ref} of {counts["cfg"].ref} levels guided): NFE/image '
        f'{counts["interval"].total} vs {counts["cfg"].total} (ratio {nfe_ratio:.3f}); wall '
        f'{1e3 * statistics.median(times["interval"]):.0f} vs {1e3 * statistics.median(times["cfg"]):.0f} ms '
        f'(ratio {time_ratio:.3f}); time ratio / NFE ratio {time_ratio / nfe_ratio:.3f}')


if __name__ == '__main__':
  main()
