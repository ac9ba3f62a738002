"""Per-device memory of the compiled train step and sampler for the ImageNet presets, without allocating.

Each program is lowered from jax.ShapeDtypeStruct inputs and compiled for ONE device (data parallel:
the state is replicated, so a device runs this program at its share of the global batch);
`compiled.memory_analysis()` gives XLA's buffer assignment:
  peak ≈ arguments + outputs − aliased (donated) + temporaries.
Memory is fitted as a + b·batch from two small per-device batches, checked by compiling at the
configured global batch on 8 devices (per device: batch / 8), and gives the largest per-device batch
that fits 16 / 40 / 80 GB; each of those is compiled too (and, where it does not fit, the batch the
secant through it predicts).
The sampler is the eval program: all `guidance.weights` vmapped in one scan over T steps; it is
compiled at T = 16 and at the configured T to show that its memory does not grow with T.

These are XLA:CPU numbers: GPU/TPU compilers fuse and schedule differently (and cuDNN workspaces
come on top), so read them as estimates of the same program, not as a GPU's exact peak.

  .venv/bin/python experiments/memory.py [--configs imagenet64 imagenet128] [--batches 1 2] [--devices 8] \
      [--no-check_budgets]
  .venv/bin/python experiments/memory.py --presets imagenet64:h100x8 imagenet64:tpu_v5p_64 …

--presets compiles each hardware preset's own programs (PRESETS in configs/<name>.py: its device count
and memory): the train step at the per-device batch, accumulated over train.grad_accum_steps
micro-batches, and the sampler at the per-device sampling batch with eval.weights_per_program weights.
"""

import argparse
import functools
import importlib
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cfg import build, data, generate, parallel, train, train_state  # pylint: disable=g-import-not-at-top

GB = 1e9
BUDGETS_GB = (16, 40, 80)


def peak_bytes(compiled):
  """arguments + outputs − aliased + temporaries of a compiled program."""
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def compile_timed(jitted, *args):
  start = time.time()
  compiled = jitted.lower(*args).compile()
  return compiled, time.time() - start


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def train_program(config, model, optimizer):
  step = functools.partial(train.train_step, model=model, optimizer=optimizer, config=config)
  state = abstract(jax.eval_shape(functools.partial(train_state.init_state, config, model, optimizer)))

  def at_batch(batch):
    images = jax.ShapeDtypeStruct((batch, *data.image_shape(config.data)), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return compile_timed(jax.jit(step, donate_argnums=0), state, {'images': images, 'labels': labels})

  return at_batch, state


def sampler_program(config, model, params, mesh, num_weights=None):
  num_weights = num_weights or len(config.guidance.weights)

  def at(batch, num_steps):
    c = config.copy_and_resolve_references()
    c.sampling.num_steps = num_steps
    rows = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return compile_timed(generate.make_sample_fn(model, c, mesh), params,
                         jax.ShapeDtypeStruct((2,), jnp.uint32), rows, rows,
                         jax.ShapeDtypeStruct((num_weights,), jnp.float32))

  return at


def linear_fit(points):
  """(a, b) of memory = a + b·batch through the first two points."""
  (b1, m1), (b2, m2) = points[:2]
  slope = (m2 - m1) / (b2 - b1)
  return m1 - slope * b1, slope


def largest_batch(fit, budget_bytes):
  a, b = fit
  return max(int((budget_bytes - a) // b), 0)


def check_budgets(name, compile_at, points):
  """Compiles at the batch the small-batch line predicts for each budget; where that does not fit
  (memory grows faster than linearly), once more at the secant through the two nearest points."""
  fit = linear_fit(points)
  for gb in BUDGETS_GB:
    batch = largest_batch(fit, gb * GB)
    if batch < 1:
      continue
    measured = peak_bytes(compile_at(batch)[0])
    line = f'    {gb} GB: predicted {batch}, compiled {measured / GB:.3f} GB'
    if measured > gb * GB:
      secant = linear_fit([points[1], (batch, measured)])
      batch = largest_batch(secant, gb * GB)
      measured = peak_bytes(compile_at(batch)[0])
      line += f'; secant {batch}, compiled {measured / GB:.3f} GB'
    verdict = 'fits' if measured <= gb * GB else f'over by {(measured - gb * GB) / 1e6:.0f} MB'
    print(f'{line} → {verdict} ({name})', flush=True)


def report(name, points, fit):
  a, b = fit
  print(f'  {name}: {a / GB:.2f} GB + {b / GB * 1e3:.1f} MB per example')
  for batch, measured in points:
    print(f'    per-device batch {batch:4d}: {measured / GB:7.3f} GB compiled, {(a + b * batch) / GB:7.3f} GB fitted')
  print('    largest per-device batch: ' +
        ', '.join(f'{largest_batch(fit, gb * GB)} in {gb} GB' for gb in BUDGETS_GB))


def measure(config_name, batches, *, num_devices, long_steps, check):
  config = importlib.import_module(f'configs.{config_name}').get_config()
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  mesh = parallel.data_mesh()
  at_batch, state = train_program(config, model, optimizer)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f'\n== {config_name} (compiled for 1 of {num_devices} devices): {num_params / 1e6:.1f}M parameters, '
        f'{config.data.image_size}×{config.data.image_size}, '
        f'train batch {config.train.batch_size}, sampling batch {config.sampling.batch_size} × '
        f'{len(config.guidance.weights)} weights, {config.sampling.sampler} T={config.sampling.num_steps}',
        flush=True)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  print(f'  train state (params, EMA, Adam μ ν): {state_bytes / GB:.2f} GB', flush=True)

  train_points = []
  for batch in [*batches, config.train.batch_size // num_devices]:
    compiled, seconds = at_batch(batch)
    train_points.append((batch, peak_bytes(compiled)))
    print(f'  train step, per-device batch {batch}: {peak_bytes(compiled) / GB:.3f} GB '
          f'(compiled in {seconds:.0f} s)', flush=True)
  report('train step', train_points, linear_fit(train_points))
  if check:
    check_budgets('train step', at_batch, train_points)

  sample_at = sampler_program(config, model, state.ema_params, mesh)
  sample_points = []
  for batch in [*batches, config.sampling.batch_size // num_devices]:
    compiled, seconds = sample_at(batch, 16)
    sample_points.append((batch, peak_bytes(compiled)))
    print(f'  sampler T=16, per-device batch {batch}: {peak_bytes(compiled) / GB:.3f} GB '
          f'(compiled in {seconds:.0f} s)', flush=True)
  report(f'sampler ({len(config.guidance.weights)} weights, 2 network rows each)', sample_points,
         linear_fit(sample_points))
  if check:
    check_budgets('sampler', lambda batch: sample_at(batch, 16), sample_points)
  compiled, seconds = sample_at(batches[0], long_steps or config.sampling.num_steps)
  print(f'  sampler T={long_steps or config.sampling.num_steps}, per-device batch {batches[0]}: '
        f'{peak_bytes(compiled) / GB:.3f} GB vs {sample_points[0][1] / GB:.3f} GB at T=16 '
        f'(compiled in {seconds:.0f} s)', flush=True)


def measure_preset(spec):
  """Compiles preset `config:preset`'s train step and sampler per device; prints GB against its memory."""
  config_name, preset = spec.split(':')
  module = importlib.import_module(f'configs.{config_name}')
  config, hardware = module.get_config(preset), module.PRESETS[preset]
  devices, budget = hardware['devices'], hardware['memory_gb']
  model = build.model_from_config(config)
  at_batch, state = train_program(config, model, build.optimizer_from_config(config.optim))
  accum, batch = config.train.grad_accum_steps, config.train.batch_size // devices
  compiled, seconds = at_batch(batch)
  verdict = lambda gb: 'fits' if gb <= budget else 'DOES NOT FIT'
  gb = peak_bytes(compiled) / GB
  print(f'\n== {spec} ({devices} devices × {budget} GB): train batch {config.train.batch_size} → {batch} per '
        f'device = {accum} × {batch // accum}: {gb:.2f} GB, {verdict(gb)} (compiled in {seconds:.0f} s)', flush=True)
  weights = config.eval.weights_per_program or len(config.guidance.weights)
  sample_batch = config.sampling.batch_size // devices
  compiled, seconds = sampler_program(config, model, state.ema_params, parallel.data_mesh(), weights)(
      sample_batch, 16)
  gb = peak_bytes(compiled) / GB
  print(f'   sampler {sample_batch} per device × {weights} of {len(config.guidance.weights)} weights per program: '
        f'{gb:.2f} GB, {verdict(gb)} (compiled in {seconds:.0f} s)', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--configs', nargs='+', default=['imagenet64', 'imagenet128'])
  parser.add_argument('--presets', nargs='+', default=None, help='config:preset, e.g. imagenet64:h100x8')
  parser.add_argument('--batches', nargs='+', type=int, default=[1, 2],
                      help='two small per-device batches that fit the line')
  parser.add_argument('--devices', type=int, default=8,
                      help='the configured global batches are checked at batch / devices per device')
  parser.add_argument('--long_steps', type=int, default=None, help='T of the long sampler (config T)')
  parser.add_argument('--check_budgets', action=argparse.BooleanOptionalAction, default=True,
                      help='compile at the predicted largest batches (1–2 more compiles per budget)')
  args = parser.parse_args()
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores')
  start = time.time()
  for spec in args.presets or ():
    measure_preset(spec)
  for name in (args.configs if not args.presets else ()):
    measure(name, args.batches, num_devices=args.devices, long_steps=args.long_steps,
            check=args.check_budgets)
  print(f'\nwall time {time.time() - start:.0f} s')


if __name__ == '__main__':
  main()
