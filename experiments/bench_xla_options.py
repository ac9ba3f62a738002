"""XLA:CPU compile options on the default U-Net's train step: img/s of each, side by side in one run.

python experiments/bench_xla_options.py                     # every variant in VARIANTS
python experiments/bench_xla_options.py --only=project,vector512 --rounds=5
python experiments/bench_xla_options.py --pause_group=PGID   # beside a background job: paused while timed

Each variant is the project's options (`cfg.parallel.compiler_options()`) with some flags added, or
XLA's defaults. All are compiled from the same lowered train step (batch 64); every round runs each
variant `--steps` times one after the other, and the table reports the best round's img/s and its
ratio to the project's options. Beside it, how far the loss and the gradients (Adam's first moment after
the step: the warmup's learning rate is 0 at step 0, so the parameters do not move) are from the project's
compile: an option that changes the arithmetic beyond float32 rounding is no
candidate (fast-math flags are not tried for that reason).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from cfg import parallel  # noqa: E402

import interleaved  # noqa: E402  (experiments/interleaved.py, beside this script)

PROJECT = parallel.compiler_options('cpu')
VARIANTS = {
    'xla_defaults': None,
    'project': {},
    'multi_output_fusion': {'xla_cpu_use_multi_output_fusion': True},
    'concurrency_scheduler': {'xla_cpu_enable_concurrency_optimized_scheduler': True},
    'no_concurrency_scheduler': {'xla_cpu_enable_concurrency_optimized_scheduler': False},
    'scheduler_memory': {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'},
    'vector512': {'xla_cpu_prefer_vector_width': 512},
    'fast_runtime_preset': {'xla_cpu_opt_preset': 'CPU_OPT_PRESET_FAST_RUNTIME'},
    'no_fusion_emitters': {'xla_cpu_use_fusion_emitters': False},
    'no_tiled_emitter': {'xla_cpu_disable_tiled_emitter': True},
    'tiling_propagation': {'xla_cpu_experimental_enable_tiling_propagation': True},
    'flatten_after_fusion': {'xla_cpu_flatten_after_fusion': True},
    'single_thread_eigen': {'xla_cpu_multi_thread_eigen': False},
    'no_loop_unrolling': {'xla_cpu_disable_loop_unrolling': True},
    'no_slp_vectorizer': {'xla_cpu_disable_slp_vectorizer': True},
    'platform_dependent_math': {'xla_cpu_enable_platform_dependent_math': True},
    'legacy_runtime': {'xla_cpu_use_thunk_runtime': False},
    'legacy_runtime_onednn': {'xla_cpu_use_thunk_runtime': False, 'xla_cpu_use_onednn': True},
    'onednn_custom_call': {'xla_cpu_experimental_onednn_custom_call': True},
    'onednn_custom_call_use_onednn': {'xla_cpu_experimental_onednn_custom_call': True,
                                      'xla_cpu_use_onednn': True},
    'ynn_dot_eltwise': {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE'},
    'ynn_dot_reduce': {'xla_cpu_experimental_ynn_fusion_type':
                       'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'},
    'ynn_dot_eltwise_reduce': {'xla_cpu_experimental_ynn_fusion_type':
                               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE,'
                               'LIBRARY_FUSION_TYPE_REDUCE'},
    'ynn_conv_dot_reduce': {'xla_cpu_experimental_ynn_fusion_type':
                            'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                            'LIBRARY_FUSION_TYPE_REDUCE'},
    # Options that jaxlib 0.12 has and 0.10.2 did not (Python 3.12 venv).
    'onednn_conv': {'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'},
    'onednn_conv_use_onednn': {'xla_cpu_experimental_onednn_fusion_type':
                               'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION', 'xla_cpu_use_onednn': True},
    # (with xla_cpu_use_onednn, any oneDNN fusion type gives the same program: oneDNN takes the dots, not the
    # convolutions; without it, none changes the program)
    'ynn_reduce_only': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'},
    'onednn_eltwise': {'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_ELTWISE'},
    'xnn_conv': {'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'},
    'xnn_eltwise': {'xla_cpu_experimental_xnn_fusion_type': 'LIBRARY_FUSION_TYPE_ELTWISE'},
    'mlir_tiling_and_fusion': {'xla_cpu_enable_mlir_tiling_and_fusion': True},
    'custom_matmul_tiling': {'xla_cpu_enable_custom_matmul_tiling': True},
    'experimental_deallocation': {'xla_cpu_enable_experimental_deallocation': True},
    'ynn_dot_eltwise_reduce_no_fusion_emitters': {
        'xla_cpu_experimental_ynn_fusion_type':
            'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE',
        'xla_cpu_use_fusion_emitters': False},
}


def lowered_step(batch_size):
  step, state, batch = interleaved.default_train_step(batch_size)
  return jax.jit(step).lower(state, batch), (state, batch)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--only', default='', help='comma-separated variant names (default: all)')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--json', default='', help='also write the raw times and provenance here')
  parser.add_argument('--pause_group', type=int, default=0,
                      help='a process group (e.g. a background evaluation) to SIGSTOP while the '
                           'rounds are timed and SIGCONT after; compiling runs beside it')
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n] or list(VARIANTS)
  if 'project' not in names:
    names.insert(0, 'project')
  lowered, inputs = lowered_step(args.batch)
  compiled, compile_s = {}, {}
  for name in names:
    options = {} if VARIANTS[name] is None else {**PROJECT, **VARIANTS[name]}
    start = time.perf_counter()
    try:
      compiled[name] = lowered.compile(options)
    except Exception as error:  # an option this XLA build rejects: report it, go on
      print(f'{name}: does not compile: {str(error).splitlines()[0][:200]}', flush=True)
      continue
    compile_s[name] = time.perf_counter() - start
  reference = jax.block_until_ready(compiled['project'](*inputs))
  reference_gradients = interleaved.first_step_gradients(reference[0])
  differences = {}  # name: (|Δ loss|, largest relative difference of the gradients)
  for name, fn in compiled.items():
    out = jax.block_until_ready(fn(*inputs))
    differences[name] = (abs(float(out[1]['loss']) - float(reference[1]['loss'])),
                         interleaved.largest_relative_difference(interleaved.first_step_gradients(out[0]),
                                                                 reference_gradients))
  load = os.getloadavg()[0]
  times = interleaved.time_rounds(compiled, inputs, rounds=args.rounds, steps=args.steps,
                                  pause_group=args.pause_group)
  base = args.batch / min(times['project'])
  print(f'\ntrain step, batch {args.batch}, best of {args.rounds} rounds of {args.steps} steps '
        f'(load average at start {load:.2f})')
  print('| variant | img/s | ratio to project | compile s | |Δ| loss | max rel. |Δ| gradients |')
  print('|---|---|---|---|---|---|')
  for name in compiled:
    rate = args.batch / min(times[name])
    print(f'| {name} | {rate:.1f} | {rate / base:.3f}× | {compile_s[name]:.1f} | '
          f'{differences[name][0]:.1e} | {differences[name][1]:.1e} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**interleaved.benchmark_provenance(), 'load_average_at_start': load, 'batch': args.batch,
                 'seconds_per_step': times, 'compile_seconds': compile_s,
                 'loss_and_gradient_differences': differences,
                 'variants': {n: VARIANTS[n] for n in compiled}}, f, indent=1)


if __name__ == '__main__':
  main()
