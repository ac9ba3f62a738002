"""Sampler costs, measured side by side in one run; prints ratios.

(a) compile time of the jitted guided ancestral sampler at T = 1024 vs T = 16 (one scan: ~1×);
(b) time per guided step (one network call of 2B) vs unguided step (B)   (target ≤ 2.05);
(c) K guidance weights in one vmapped program vs K single-weight runs    (target ≤ ~1.05).

The network is a 1.37M-parameter 28×28 U-Net (channels 32/64/64, attention at 7×7), random weights.
Timings: one warm-up call each, then repeats interleaved (A, B, A, B, …) with block_until_ready.
A ratio is the median over repeats of A/B within one repeat (neighbouring calls see the same load
on a shared machine); the median times are printed beside it.

  .venv/bin/python experiments/bench_sampler.py [--batch 16 --steps 8 --sweep_steps 4 \
      --num_weights 4 --repeats 9]
"""

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cfg import parallel, samplers  # pylint: disable=g-import-not-at-top
from cfg.models.unet import UNet, count_params  # pylint: disable=g-import-not-at-top

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def make_model():
  return UNet(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
              head_channels=32, dropout=0.0, num_classes=NUM_CLASSES, norm_groups=8)


def make_sampler(model, *, num_steps, guide):
  """jit(params, key, labels, w) -> x̂; the parameters are an argument, not constants."""

  def sample(params, key, labels, guidance_weight):
    return samplers.ancestral_sample(
        functools.partial(model.apply, params), key=key, labels=labels,
        guidance_weight=guidance_weight, image_shape=IMAGE_SHAPE, num_steps=num_steps,
        null_label=NUM_CLASSES, guide=guide)

  return parallel.jit(sample)


def make_sweep(model, *, num_steps):
  """jit(params, key, labels, weights [K]) -> x̂ [K, B, ...] via sample_sweep."""

  def sweep(params, key, labels, guidance_weights):
    sampler = functools.partial(samplers.ancestral_sample, functools.partial(model.apply, params),
                                image_shape=IMAGE_SHAPE, num_steps=num_steps,
                                null_label=NUM_CLASSES)
    return samplers.sample_sweep(sampler, guidance_weights=guidance_weights, key=key,
                                 labels=labels)

  return parallel.jit(sweep)


def set_up(model, batch, description):
  """(key, labels [B], random params) of `model`; prints the machine and the network."""
  key = jax.random.key(0)
  labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  params = model.init(key, jnp.zeros((1,) + IMAGE_SHAPE), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  print(f'machine: {platform.node()} {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; '
        f'jax {jax.__version__} on {jax.devices()[0].device_kind}')
  print(f'network: UNet ({description}), {count_params(model, IMAGE_SHAPE):,} parameters, '
        f'images {IMAGE_SHAPE}, batch B = {batch}')
  return key, labels, params


def compile_seconds(jitted, *args):
  """Wall time of trace + lower + XLA compile."""
  start = time.perf_counter()
  jitted.lower(*args).compile()
  return time.perf_counter() - start


def wall_seconds(calls, repeats):
  """{name: [wall time per repeat]} of each zero-argument call, after one warm-up, interleaved."""
  for call in calls.values():
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
  return times


def paired_ratio(numerator, denominator):
  """Median over repeats of numerator[i] / denominator[i]."""
  return statistics.median(n / d for n, d in zip(numerator, denominator))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--steps', type=int, default=8, help='T for (b)')
  parser.add_argument('--sweep_steps', type=int, default=4, help='T for (c)')
  parser.add_argument('--num_weights', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=9)
  flags = parser.parse_args()

  model = make_model()
  key, labels, params = set_up(model, flags.batch, 'channels 32/64/64')

  # (a) compile time does not grow with T.
  args = (params, key, labels, jnp.float32(1.0))
  short, long = (compile_seconds(make_sampler(model, num_steps=t, guide=True), *args)
                 for t in (16, 1024))
  print(f'(a) compile, guided ancestral: T=16 {short:.2f} s, T=1024 {long:.2f} s, '
        f'ratio {long / short:.2f}')

  # (b) guided step vs unguided step, beside the bare network at 2B vs B: on CPU the network
  # alone can scale a little worse than linearly in batch; the rest is the guidance overhead.
  guided = make_sampler(model, num_steps=flags.steps, guide=True)
  unguided = make_sampler(model, num_steps=flags.steps, guide=False)
  network = parallel.jit(model.apply)
  inputs = {batch: (jnp.zeros((batch,) + IMAGE_SHAPE), jnp.zeros((batch,)),
                    jnp.zeros((batch,), jnp.int32)) for batch in (flags.batch, 2 * flags.batch)}
  times = wall_seconds({
      'guided': lambda: guided(*args),
      'unguided': lambda: unguided(*args),
      'network_2b': lambda: network(params, *inputs[2 * flags.batch]),
      'network_b': lambda: network(params, *inputs[flags.batch]),
  }, flags.repeats)
  median_ms = {name: 1e3 * statistics.median(values) for name, values in times.items()}
  step_ratio = paired_ratio(times['guided'], times['unguided'])
  network_ratio = paired_ratio(times['network_2b'], times['network_b'])
  print(f'(b) per step, T={flags.steps}: guided (one call of 2B={2 * flags.batch}) '
        f'{median_ms["guided"] / flags.steps:.1f} ms, unguided (B={flags.batch}) '
        f'{median_ms["unguided"] / flags.steps:.1f} ms, ratio {step_ratio:.3f} (target <= 2.05)')
  print(f'    bare network call 2B vs B: {median_ms["network_2b"]:.1f} vs '
        f'{median_ms["network_b"]:.1f} ms, ratio {network_ratio:.3f}; guided-step ratio / '
        f'network ratio {step_ratio / network_ratio:.3f}')

  # (c) K weights in one vmapped program vs K single-weight runs.
  weights = jnp.linspace(0.0, 3.0, flags.num_weights)
  single = make_sampler(model, num_steps=flags.sweep_steps, guide=True)
  sweep = make_sweep(model, num_steps=flags.sweep_steps)
  times = wall_seconds({
      'sweep': lambda: sweep(params, key, labels, weights),
      'loop': lambda: [single(params, key, labels, w) for w in weights],
  }, flags.repeats)
  print(f'(c) K={flags.num_weights} weights, T={flags.sweep_steps}: one vmapped program '
        f'{statistics.median(times["sweep"]):.2f} s, {flags.num_weights} single-weight runs '
        f'{statistics.median(times["loop"]):.2f} s, ratio '
        f'{paired_ratio(times["sweep"], times["loop"]):.3f} (target <= ~1.05)')


if __name__ == '__main__':
  main()
