"""Where the default U-Net's time goes on XLA:CPU: a jax.profiler trace, summed per kind of HLO op.

python experiments/profile_step.py --program=train            # the full train step, batch 64
python experiments/profile_step.py --program=forward          # the forward pass, batch 128
python experiments/profile_step.py --program=train --xla_defaults --top=30
python experiments/profile_step.py --program=train --no_conv --match='/(conv_in|conv_out|skip)/(mul|pad)'

XLA:CPU's thunk runtime records one trace event per executed thunk, named after its HLO
instruction. The script compiles the program (with the project's compile options unless
--xla_defaults), traces a few runs, maps each event to its instruction in the compiled HLO and
sums the time by kind: convolution fusions (split into forward, input-gradient and
kernel-gradient by their output shape), reductions, elementwise fusions, transposes, dots, copies.

Caveat found on the way: with the options, convolutions run through Eigen, whose work is
dispatched to its own thread pool and finishes after the thunk's event has closed, so their time
is missing from the sums (the per-thunk view undercounts them); time the model with parts
replaced to weigh them (experiments/throughput.md).
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402

from cfg import build, parallel, train, train_state  # noqa: E402
from configs import fashion_mnist  # noqa: E402

import ablate_conv_grads  # noqa: E402  (beside this script)
import interleaved  # noqa: E402


def compiled_program(name, options, conv_impl='auto'):
  """(compiled, args) for the train step (batch 64) or the forward pass (batch 128); `conv_impl`:
  config.model.conv_impl."""
  config = fashion_mnist.get_config()
  config.model.conv_impl = conv_impl
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = jax.jit(lambda: train_state.init_state(config, model, optimizer))()
  if name == 'train':
    batch = {'images': jax.random.normal(jax.random.key(1), (64, 28, 28, 1)),
             'labels': jnp.arange(64, dtype=jnp.int32) % 10}
    fn = jax.jit(lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer,
                                               config=config))
    args = (state, batch)
  else:
    fn = jax.jit(model.apply)
    args = (state.params, jax.random.normal(jax.random.key(2), (128, 28, 28, 1)),
            jnp.zeros((128,)), jnp.arange(128, dtype=jnp.int32) % 11)
  return fn.lower(*args).compile(options), args


def hlo_instructions(hlo_text):
  """{instruction name: (shape, opcode, line)} and {computation name: [lines]}."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header and '(' in line:
      current = header.group(1)
      computations[current] = []
    elif current and line.strip().startswith(('%', 'ROOT')):
      computations[current].append(line.strip())
  instructions = {}
  for lines in computations.values():
    for line in lines:
      match = re.match(r'(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\(', line)
      if match:
        instructions[match.group(1)] = (match.group(2), match.group(3), line)
  return instructions, computations


def op_name(line):
  """The op_name metadata of one HLO instruction's line ('' without one)."""
  match = re.search(r'op_name="([^"]+)"', line)
  return match.group(1) if match else ''


def kind_of(name, instructions, computations):
  """'convolution: forward | input gradient | kernel gradient', 'fusion: reduce', … for one thunk."""
  if name not in instructions:
    return None
  shape, opcode, line = instructions[name]
  if opcode == 'custom-call':  # the oneDNN convolutions (conv_impl=onednn): named by their target
    target = re.search(r'custom_call_target="([^"]+)"', line)
    return f'custom-call: {target.group(1)}' if target else opcode
  body = line
  if opcode == 'fusion':
    called = re.search(r'calls=%?([\w.\-]+)', line)
    body = ' '.join(computations.get(called.group(1), [])) if called else ''
  # Metadata names the jax op each instruction came from ("transpose(jvp(UNet))" for the whole backward
  # pass): match the instructions only.
  body = re.sub(r'metadata=\{[^}]*\}', '', body)
  for op in ('convolution', 'dot', 'reduce-window', 'reduce', 'transpose'):
    if re.search(r'\b' + op + r'\(', body) or opcode == op:
      if op != 'convolution':
        return op
      dims = re.match(r'\w+\[(\d+),(\d+),(\d+),(\d+)\]', shape)
      if dims and dims.group(2) == dims.group(3) and dims.group(2) in ('1', '3'):
        return 'convolution: kernel gradient'
      return 'convolution: input gradient' if 'transpose(' in line else 'convolution: forward'
  return 'elementwise' if opcode == 'fusion' else opcode


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--program', choices=('train', 'forward'), default='train')
  parser.add_argument('--xla_defaults', action='store_true', help='without the project\'s options')
  parser.add_argument('--single_thread_eigen', action='store_true',
                      help='run Eigen\'s convolutions inside their thunks (xla_cpu_multi_thread_eigen=False), '
                           'so that the per-thunk sums count them')
  parser.add_argument('--no_conv', action='store_true',
                      help='every convolution replaced by ablate_conv_grads.cheap_conv while tracing')
  parser.add_argument('--match', default='',
                      help='also sum the thunks whose op_name matches this regular expression')
  parser.add_argument('--conv_impl', default='auto', choices=('auto', 'xla', 'onednn'),
                      help='config.model.conv_impl (--no_conv: xla)')
  parser.add_argument('--json', default='', help='also write the sums and provenance here')
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--top', type=int, default=10, help='also list the N slowest thunks')
  args = parser.parse_args()
  options = {} if args.xla_defaults else parallel.compiler_options()
  if args.single_thread_eigen:
    options = {**options, 'xla_cpu_multi_thread_eigen': False}
  if args.no_conv:
    plain, jax.lax.conv_general_dilated = jax.lax.conv_general_dilated, ablate_conv_grads.cheap_conv
    try:
      compiled, inputs = compiled_program(args.program, options, conv_impl='xla')  # lax's, replaced
    finally:
      jax.lax.conv_general_dilated = plain
  else:
    compiled, inputs = compiled_program(args.program, options, args.conv_impl)
  jax.block_until_ready(compiled(*inputs))
  start = time.perf_counter()
  for _ in range(args.runs):
    jax.block_until_ready(compiled(*inputs))
  wall_ms = (time.perf_counter() - start) / args.runs * 1e3
  instructions, computations = hlo_instructions(compiled.as_text())
  jax.block_until_ready(compiled(*inputs))
  directory = tempfile.mkdtemp()
  with jax.profiler.trace(directory):
    for _ in range(args.runs):
      jax.block_until_ready(compiled(*inputs))
  trace = _profile_data.ProfileData.from_file(
      sorted(glob.glob(f'{directory}/**/*.xplane.pb', recursive=True))[-1])
  by_kind, by_thunk = collections.Counter(), collections.Counter()
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        kind = kind_of(event.name, instructions, computations)
        if kind:
          by_kind[kind] += event.duration_ns / 1e6 / args.runs
          by_thunk[event.name] += event.duration_ns / 1e6 / args.runs
  total = sum(by_kind.values())
  print(f'{args.program}{" (convolutions replaced)" if args.no_conv else ""}, '
        f'options={options or "XLA defaults"}: {total:.0f} ms in thunks per run (both threads), '
        f'{wall_ms:.0f} ms wall per run untraced')
  if args.match:
    matched = sum(ms for name, ms in by_thunk.items() if re.search(args.match, op_name(instructions[name][2])))
    print(f'  {matched:8.1f} ms  {matched / total:6.1%}  thunks whose op_name matches {args.match!r}')
  for kind, ms in by_kind.most_common():
    print(f'  {ms:8.1f} ms  {ms / total:6.1%}  {kind}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**interleaved.benchmark_provenance(), 'options': options, 'wall_ms_untraced': wall_ms,
                 'thunk_ms_by_kind': dict(by_kind), 'matched_ms': matched if args.match else None}, f, indent=1)
  for name, ms in by_thunk.most_common(args.top):
    shape, _, line = instructions[name]
    print(f'  {ms:7.2f} ms  {name:32s} {shape[:28]:28s} {op_name(line)[-70:]}')


if __name__ == '__main__':
  main()
