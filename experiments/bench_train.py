"""Training throughput: images/s of the jitted train step, per-device batch, and model FLOP utilisation.

python experiments/bench_train.py                                   # configs/fashion_mnist.py
python experiments/bench_train.py --config=imagenet64 --batch=16     # the paper's ImageNet 64 U-Net
python experiments/bench_train.py --config=imagenet64 --batch=64 --flops_only   # FLOPs, on any CPU
python experiments/bench_train.py --steps_per_call=8     # 8 train steps per dispatch (lax.scan)
python experiments/bench_train.py --config=imagenet64 --bf16 --attention_impl=xla   # against auto's cuDNN on a GPU

FLOPs per step come from XLA's cost analysis of the lowered (not yet optimised) step: forward +
backward + update, the same count on every backend. The compiled program's analysis is no substitute:
on GPUs XLA hands convolutions to cuDNN as custom calls whose FLOPs it does not see (on an H200 it
reported 10x fewer for the Fashion-MNIST step), and with jax 0.11.2's CUDA plugin the lowered program
gave no count at all. There, count with --flops_only on a CPU (shapes only, seconds) and pass the
number as --flops_per_step. MFU = achieved FLOP/s ÷ the device's peak (bf16 dense peak for
GPUs/TPUs, whatever the compute dtype; none for CPUs).
"""

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cfg import build, data, parallel, train, train_state  # noqa: E402
from cfg.models import layers  # noqa: E402

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12, 'TPU v5': 459e12,
              'TPU v5 lite': 197e12, 'TPU v6': 918e12}


def peak_flops(device):
  kind = device.device_kind
  matches = [name for name in PEAK_FLOPS if name.lower() in kind.lower()]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def lowered_flops(lowered):
  """Global FLOPs of a lowered program from XLA's cost analysis; 0.0 where the backend gives none."""
  try:
    cost = lowered.cost_analysis()
  except NotImplementedError:  # some PJRT plugins analyse only compiled programs
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)) if cost else 0.0


def parse_args():
  """The command line, and the config it describes."""
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='fashion_mnist', help='a module in configs/')
  parser.add_argument('--batch', type=int, default=None, help='global batch (default: the config\'s)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--bf16', action='store_true', help='bfloat16 compute, float32 params')
  parser.add_argument('--attention_impl', choices=layers.ATTENTION_IMPLS, default=None,
                      help='config.model.attention_impl (default: the config\'s, auto: cuDNN\'s fused '
                           'attention on NVIDIA GPUs in bfloat16)')
  parser.add_argument('--steps_per_call', type=int, default=1,
                      help='train steps per dispatch (train.steps_per_call: a lax.scan over that many '
                           'batches); times and FLOPs are per step')
  parser.add_argument('--flops_only', action='store_true',
                      help='print the step\'s FLOPs from its lowered program, then stop')
  parser.add_argument('--flops_per_step', type=float, default=None,
                      help='global FLOPs per step for MFU, e.g. from --flops_only on a CPU where '
                           'this backend\'s cost analysis gives none')
  args = parser.parse_args()
  config = importlib.import_module(f'configs.{args.config}').get_config()
  if args.batch:
    config.train.batch_size = args.batch
  if args.bf16:
    config.model.compute_dtype = 'bfloat16'
  if args.attention_impl:
    config.model.attention_impl = args.attention_impl
  return args, config


def print_mfu(flops_per_step, seconds, device):
  """Achieved FLOP/s per device and MFU for a global step of `flops_per_step` FLOPs in `seconds`."""
  if not flops_per_step:
    print('MFU: this backend\'s cost analysis gives no FLOPs; count them with --flops_only on a '
          'CPU and pass --flops_per_step')
    return
  peak = peak_flops(device)
  per_device = flops_per_step / jax.device_count()  # the lowered program is the global step
  achieved = per_device / seconds
  mfu = f'{achieved / peak:.1%}' if peak else 'n/a (no peak known for this device)'
  print(f'XLA flops/step/device={per_device:.3e} achieved={achieved / 1e12:.2f} TFLOP/s/device '
        f'MFU={mfu}')


def main():
  args, config = parse_args()
  mesh = parallel.data_mesh()
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  init = jax.jit(lambda: train_state.init_state(config, model, optimizer),
                 out_shardings=parallel.replicated(mesh))
  batch_size = config.train.batch_size
  shape = data.image_shape(config.data)
  k = args.steps_per_call
  stacked = parallel.stacked_batch_sharded(mesh)
  step = parallel.jit(lambda s, b: train.train_steps(s, b, model=model, optimizer=optimizer, config=config),
                      in_shardings=(parallel.replicated(mesh), stacked), donate_argnums=0)
  # FLOPs of one step, from the one-step program (a loop's analysis counts its body once, an unrolled
  # program's every copy): shapes only, no parameters are allocated and nothing is compiled.
  one_step = {'images': jax.ShapeDtypeStruct((1, batch_size, *shape), jnp.float32),
              'labels': jax.ShapeDtypeStruct((1, batch_size), jnp.int32)}
  # With XLA's convolutions and attention: oneDNN's convolutions and cuDNN's attention are custom calls that
  # cost analysis counts as 0.
  xla_config = config.copy_and_resolve_references()
  xla_config.model.conv_impl = xla_config.model.attention_impl = 'xla'
  xla_model = build.model_from_config(xla_config)
  counted = parallel.jit(lambda s, b: train.train_steps(s, b, model=xla_model, optimizer=optimizer, config=config),
                         in_shardings=(parallel.replicated(mesh), stacked), donate_argnums=0)
  step_flops = lambda: lowered_flops(counted.lower(jax.eval_shape(init), one_step))
  if args.flops_only:
    flops = step_flops()
    print(f'config={args.config} compute={config.model.compute_dtype} global batch={batch_size} '
          f'XLA flops/step (global)={flops:.4e}')
    return
  state = init()
  batch = jax.device_put({
      'images': jnp.zeros((k, batch_size, *shape), jnp.float32),
      'labels': jnp.tile(jnp.arange(batch_size, dtype=jnp.int32) % config.data.num_classes, (k, 1))}, stacked)
  start = time.time()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_seconds = time.time() - start
  flops_per_step = args.flops_per_step or step_flops()
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.time()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.time() - start) / (args.steps * k)  # per train step
  device = jax.devices()[0]
  params = sum(x.size for x in jax.tree.leaves(state.params))
  # What `auto` chose: jax's cuDNN attention lowers to custom calls named __cudnn$fmha….
  attention = 'cudnn' if '__cudnn$fmha' in lowered.as_text() else 'xla'
  print(f'config={args.config} params={params:,} device={device.device_kind} x{jax.device_count()} '
        f'compute={config.model.compute_dtype} steps_per_call={k} convolutions={model.conv_impl} '
        f'attention={attention} (attention_impl={model.attention_impl})')
  print(f'global batch={batch_size} per-device batch={batch_size // jax.device_count()} '
        f'compile={compile_seconds:.1f}s step={seconds * 1e3:.1f}ms images/s={batch_size / seconds:.1f}')
  print_mfu(flops_per_step, seconds, device)


if __name__ == '__main__':
  main()
