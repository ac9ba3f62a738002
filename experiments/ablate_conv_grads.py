"""How much of the default train step the convolutions' gradients cost: the step with one of them zeroed.

python experiments/ablate_conv_grads.py [--pause_group=PGID] [--json=FILE]

Every `lax.conv_general_dilated` of the U-Net is wrapped in a custom_vjp whose backward pass gives
both gradients (`both`: the control, same arithmetic as `plain`), the input gradient only
(`no_kernel_grad`: ∂L/∂K = 0) or the kernel gradient only (`no_input_grad`: ∂L/∂x = 0). The
programs are compiled with the project's options and timed in interleaved rounds (best round).

`swapped_kernel_grad` is not an ablation but a candidate rewrite, same arithmetic to float32 rounding:
where a convolution has fewer output than input channels, ∂L/∂K is computed as the correlation of the
cotangent (as input, batch O) by x (as kernel), then flipped in space, instead of autodiff's
convolution of x (batch I) by the cotangent. `experiments/bench_conv_layers.py` times both forms
layer by layer.

`no_conv` replaces every convolution by `cheap_conv` (one elementwise product of the output's shape, and
its gradients), so that the step's time without it is what everything but the convolutions costs.

Read `no_kernel_grad` as the cost of the kernel-gradient convolutions and the transposes XLA puts in
front of them. `no_input_grad` overstates the input gradients' cost: with ∂L/∂x = 0 at every
convolution, the backward pass of everything below a convolution in a residual branch (norms,
SiLUs) gets a zero cotangent and XLA drops it as well. An ablation, not a model: the ratios say where
time goes, nothing here trains.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from cfg import parallel  # noqa: E402

import interleaved  # noqa: E402  (experiments/interleaved.py, beside this script)

PLAIN = lax.conv_general_dilated
NHWC = ('NHWC', 'HWIO', 'NHWC')
MODES = ('plain', 'both', 'swapped_kernel_grad', 'no_kernel_grad', 'no_input_grad', 'no_conv')


def cheap_conv(lhs, rhs, *args, **kwargs):
  """A stand-in of a stride-1 NHWC convolution's output shape that costs one elementwise pass:
  x[..., :1] · K[0, 0, 0, :]."""
  return lhs[..., :1] * rhs[0, 0, 0, :]


def wrapped_conv(mode):
  """lax.conv_general_dilated with a backward pass that gives both gradients or zeroes one."""
  if mode == 'no_conv':
    return cheap_conv

  def conv(lhs, rhs, *args, **kwargs):
    apply = lambda l, r: PLAIN(l, r, *args, **kwargs)

    @jax.custom_vjp
    def c(l, r):
      return apply(l, r)

    def bwd(residuals, g):
      l, r = residuals
      d_input = (jnp.zeros_like(l) if mode == 'no_input_grad'
                 else jax.vjp(lambda a: apply(a, r), l)[1](g)[0])
      if mode == 'no_kernel_grad':
        d_kernel = jnp.zeros_like(r)
      elif mode == 'swapped_kernel_grad' and swappable(l, r, *args, **kwargs):
        d_kernel = swapped_kernel_grad(l, g, args[1], r.shape)
      else:
        d_kernel = jax.vjp(lambda k: apply(l, k), r)[1](g)[0]
      return d_input, d_kernel

    c.defvjp(lambda l, r: (apply(l, r), (l, r)), bwd)
    return c(lhs, rhs)
  return conv


def swappable(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None):
  """Whether the call is a stride-1 NHWC/HWIO convolution with fewer output than input channels."""
  ones = (1,) * (lhs.ndim - 2)
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return (lhs.ndim == 4 and numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
          and tuple(window_strides) == ones
          and tuple(lhs_dilation or ones) == ones and tuple(rhs_dilation or ones) == ones
          and feature_group_count == 1 and precision is None and rhs.shape[3] < rhs.shape[2])


def swapped_kernel_grad(x, g, padding, kernel_shape):
  """∂K[i, j, c, o] = Σ_{b,h,w} x̃[b, h + i, w + j, c] g[b, h, w, o] (x̃: x padded by `padding`), computed
  as the convolution of g, padded by (hi, lo), with x as kernel (batch O, features B), flipped in space."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], kernel_shape[:2], (1, 1), padding)
  flipped = PLAIN(g, x, (1, 1), tuple((hi, lo) for lo, hi in padding),
                  dimension_numbers=('CHWN', 'IHWO', 'HWCN'))
  return flipped[::-1, ::-1]


def compiled_steps(batch_size):
  train_step, state, batch = interleaved.default_train_step(batch_size, conv_impl='xla')  # lax's convolutions
  programs = {}
  try:
    for mode in MODES:
      lax.conv_general_dilated = PLAIN if mode == 'plain' else wrapped_conv(mode)  # read while tracing
      step = jax.jit(lambda s, b: train_step(s, b))  # a new function: traced again with this conv
      programs[mode] = step.lower(state, batch).compile(parallel.compiler_options('cpu'))
  finally:
    lax.conv_general_dilated = PLAIN
  return programs, (state, batch)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--pause_group', type=int, default=0,
                      help='a process group to SIGSTOP while the rounds are timed (SIGCONT after)')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  programs, inputs = compiled_steps(args.batch)
  times = interleaved.time_rounds(programs, inputs, rounds=args.rounds, steps=args.steps,
                                  pause_group=args.pause_group, warm_each_round=True)
  control = min(times['both'])
  print(f'train step, batch {args.batch}, best of {args.rounds} rounds of {args.steps} steps')
  print('| variant | img/s | speed-up over `both` |')
  print('|---|---|---|')
  for mode in programs:
    print(f'| {mode} | {args.batch / min(times[mode]):.1f} | {control / min(times[mode]):.3f}× |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**interleaved.benchmark_provenance(), 'seconds_per_step': times}, f, indent=1)


if __name__ == '__main__':
  main()
