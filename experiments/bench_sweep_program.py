"""The evaluation's sampling program on this CPU, side by side in one run, with ratios.

The program is `configs/fashion_mnist.py`'s (guided DDIM, T = 16, its K = 9 weights vmapped in one program,
batch 128: guided network calls of K × 2B = 2,304 rows), built by `cfg.generate.make_sample_fn` as `eval`
and `sample` build it. Sides:

  lanes one by one     oneDNN's convolutions called once per vmapped weight (vmap_method='sequential': the
                       code before the folding rule of cfg/models/onednn_conv.py `_call`, patched back in)
  folded               one oneDNN call for all K weights (now), each network call whole
  max_network_batch=N  folded, each network call split into sequential calls of at most N rows
                       (`config.sampling.max_network_batch`, cfg/samplers.py `in_chunks`)

Prints, per side, the program's seconds (best and median of the rounds, every side once per round), ms per
image-NFE, the speed-up over the first side, and the largest |difference| of its samples from the first
side's (the same float samples: 0 if the calls sum in the same order).

  python experiments/bench_sweep_program.py [--batch 128 --weights 9 --rounds 2 \
      --max_network_batch 32 64 128 --json out.json]
"""

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cfg import build, generate, parallel, train_state  # pylint: disable=g-import-not-at-top
from cfg.models import onednn_conv  # pylint: disable=g-import-not-at-top
from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
from experiments import interleaved  # pylint: disable=g-import-not-at-top

SEQUENTIAL, FOLDED = 'lanes one by one', 'folded'


def compile_side(side, max_network_batch, args, mesh):
  """(compiled program, its inputs, image-NFE per call) of one side."""
  config = fashion_mnist.get_config()
  config.sampling.batch_size = args.batch
  config.sampling.max_network_batch = max_network_batch
  config.guidance.weights = config.guidance.weights[:args.weights]
  model = build.model_from_config(config)
  params = jax.jit(lambda: train_state.init_state(config, model, build.optimizer_from_config(config.optim)))()
  # Away from the zero-initialised output layer, so the samples depend on the network.
  leaves, tree = jax.tree.flatten(params.params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  ids = jnp.arange(args.batch, dtype=jnp.int32)
  weights = jnp.asarray(config.guidance.weights, jnp.float32)
  inputs = (params, jax.random.PRNGKey(config.sampling.seed), ids % config.data.num_classes, ids, weights)
  folding = onednn_conv._call  # pylint: disable=protected-access
  if side == SEQUENTIAL:
    onednn_conv._call = onednn_conv._ffi_call  # pylint: disable=protected-access
  try:
    program = generate.make_sample_fn(model, config, mesh).jitted.lower(*inputs, None).compile()
  finally:
    onednn_conv._call = folding  # pylint: disable=protected-access
  image_nfe = generate.evaluations(config).total * args.batch * len(weights)
  return functools.partial(program, *inputs, None), image_nfe, model.conv_impl


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=fashion_mnist.get_config().sampling.batch_size)
  parser.add_argument('--weights', type=int, default=len(fashion_mnist.get_config().guidance.weights),
                      help="the first K of the config's guidance weights")
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--max_network_batch', type=int, nargs='*', default=[32, 64, 128])
  parser.add_argument('--json', default=None, help='also write the numbers here')
  args = parser.parse_args()
  mesh = parallel.data_mesh()
  sides = {SEQUENTIAL: None, FOLDED: None, **{f'max_network_batch={n}': n for n in args.max_network_batch}}
  programs, image_nfe = {}, None
  for side, max_network_batch in sides.items():
    programs[side], image_nfe, conv_impl = compile_side(side, max_network_batch, args, mesh)
  if conv_impl != 'onednn':
    print(f'note: the convolutions are {conv_impl}\'s, not oneDNN\'s: the first two sides are the same program.')
  samples = {side: np.asarray(jax.block_until_ready(run())) for side, run in programs.items()}  # + warm-up
  times = interleaved.time_rounds({side: run for side, run in programs.items()}, (), rounds=args.rounds, steps=1)

  first = next(iter(sides))
  print(f'configs/fashion_mnist.py sampling program: batch {args.batch}, {args.weights} weights vmapped, '
        f'{image_nfe:,} image-NFE a call; {args.rounds} interleaved rounds\n')
  print('| side | best (s) | median (s) | ms per image-NFE (best) | speed-up over the first (best / median) '
        '| max abs difference |')
  print('|---|---|---|---|---|---|')
  rows = {}
  for side in sides:
    best, median = min(times[side]), float(np.median(times[side]))
    difference = float(np.abs(samples[side] - samples[first]).max())
    rows[side] = dict(seconds=times[side], best=best, median=median, ms_per_image_nfe=1e3 * best / image_nfe,
                      speedup_best=min(times[first]) / best,
                      speedup_median=float(np.median(times[first])) / median, max_abs_difference=difference)
    print(f'| {side} | {best:.2f} | {median:.2f} | {1e3 * best / image_nfe:.3f} | '
          f'{rows[side]["speedup_best"]:.2f}× / {rows[side]["speedup_median"]:.2f}× | {difference:.1e} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(provenance=interleaved.benchmark_provenance(), batch=args.batch, weights=args.weights,
                     rounds=args.rounds, image_nfe_per_call=image_nfe, conv_impl=conv_impl, sides=rows), f,
                indent=1)


if __name__ == '__main__':
  main()
