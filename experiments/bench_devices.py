"""Does the default train step use both cores? The step on one device with both cores, with one core, and
with its batch split over two forced host devices, side by side in one run.

python experiments/bench_devices.py [--rounds 5] [--pause_group=PGID] [--json=FILE]

Each side is a worker process (XLA's device count is fixed per process) running the same step, batch 64,
with the project's compile options, the way `cfg/train.py` runs it (`parallel.data_mesh()`, replicated state,
'data'-sharded batch). The rounds alternate between the workers, one at a time, and report the best round.

- `one device`: the project as it runs on this CPU (one device; XLA:CPU's thread pool over all cores);
- `one device, one core`: the same pinned to core 0 (`taskset`): the step's scaling over cores;
- `two host devices`: `--xla_force_host_platform_device_count=2`, 32 images on each, XLA's all-reduce of
  the gradients; `..., single-threaded Eigen`: each device's convolutions on its own thread.

Beside the times, each worker's loss and gradients of its first step against the one-device worker's: the
split runs the same step, its gradients summed in another order.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

SIDES = {  # name: (command prefix, XLA_FLAGS)
    'one device': ([], ''),
    'one device, one core': (['taskset', '-c', '0'], ''),
    'two host devices': ([], '--xla_force_host_platform_device_count=2'),
    'two host devices, single-threaded Eigen': (
        [], '--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false'),
}


def worker(steps):
  """Serves the step: prints its info as JSON, then for each line read runs `steps` steps and prints the
  seconds per step."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS is set by the parent)
  from cfg import parallel  # pylint: disable=import-outside-toplevel
  import interleaved  # pylint: disable=import-outside-toplevel

  step, state, batch = interleaved.default_train_step(64)
  mesh = parallel.data_mesh()
  state = jax.device_put(state, parallel.replicated(mesh))
  batch = jax.device_put(batch, parallel.batch_sharded(mesh))
  compiled = parallel.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                          out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                          donate_argnums=0).lower(state, batch).compile()
  state, metrics = compiled(state, batch)
  gradients = jax.tree.map(np.asarray, interleaved.first_step_gradients(state))
  print(json.dumps(dict(devices=jax.device_count(), loss=float(metrics['loss']), jax=jax.__version__,
                        gradients={jax.tree_util.keystr(k): v.tolist()
                                   for k, v in jax.tree_util.tree_leaves_with_path(gradients)})), flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    print((time.perf_counter() - start) / steps, flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--pause_group', type=int, default=0,
                      help='a process group to SIGSTOP while the rounds are timed (SIGCONT after)')
  parser.add_argument('--json', default='')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args.steps)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from bench_peer import Worker  # pylint: disable=import-outside-toplevel
  import interleaved  # pylint: disable=import-outside-toplevel

  started = time.time()
  workers = {}
  for name, (prefix, flags) in SIDES.items():
    os.environ['XLA_FLAGS'] = flags
    workers[name] = Worker([*prefix, sys.executable, os.path.abspath(__file__), '--worker',
                            f'--steps={args.steps}'])
  os.environ.pop('XLA_FLAGS')
  # Each worker a program of the rounds: its call sends one request and returns the worker's seconds.
  programs = {name: (lambda w=w: w.run('train')) for name, w in workers.items()}
  times = {name: [] for name in workers}
  if args.pause_group:
    os.killpg(args.pause_group, signal.SIGSTOP)
  try:
    for _ in range(args.rounds):
      for name, program in programs.items():
        times[name].append(program())
  finally:
    if args.pause_group:
      os.killpg(args.pause_group, signal.SIGCONT)
  for w in workers.values():
    w.close()
  base = min(times['one device'])
  print(f'train step, batch 64, best of {args.rounds} rounds of {args.steps} steps, {os.cpu_count()} CPUs')
  print('| side | devices | img/s | ratio to one device | loss of step 1 | max rel. |Δ| gradients |')
  print('|---|---|---|---|---|---|')
  reference = {k: np.asarray(v) for k, v in workers['one device'].info['gradients'].items()}
  for name, w in workers.items():
    best = min(times[name])
    gradients = {k: np.asarray(v) for k, v in w.info['gradients'].items()}
    difference = interleaved.largest_relative_difference(gradients, reference)
    print(f'| {name} | {w.info["devices"]} | {64 / best:.1f} | {base / best:.3f}× | {w.info["loss"]:.7f} | '
          f'{difference:.1e} |')
    w.info['gradients_difference'] = difference
    del w.info['gradients']
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**interleaved.benchmark_provenance(), 'wall_seconds': time.time() - started,
                 'load_average': os.getloadavg(), 'sides': {n: list(s) for n, s in SIDES.items()},
                 'info': {n: w.info for n, w in workers.items()}, 'seconds_per_step': times}, f, indent=1)


if __name__ == '__main__':
  main()
