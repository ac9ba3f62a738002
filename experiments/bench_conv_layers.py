"""The default U-Net's convolutions one by one: forward, input gradient and kernel gradient on XLA:CPU,
beside torch's (optional), each in its own program.

python experiments/bench_conv_layers.py [--torch_python=../torchvenv/bin/python] [--pause_group=PGID]
                                        [--json=FILE]

The layer shapes are read from the jaxpr of the default config's forward pass at batch 64 (the train
step's batch). Every shape is timed alone (best of 3 rounds of `--steps` calls), with the project's
compile options: `fwd` the convolution, `dx` its input gradient, `dk` its kernel gradient as autodiff
writes it, the same three by oneDNN (`onednn_*`, cfg/models/onednn_conv.py, where it is built), and,
where the layer has fewer output than input channels, `dk swapped`: the same sums with the cotangent
as input and x as kernel (`ablate_conv_grads.swapped_kernel_grad`), with its largest difference from
`dk` relative to dk's largest entry. The peer (`--torch_python`, a venv with torch) times
`torch.nn.Conv2d` of the same shape in NCHW: `fwd` under no_grad and `bwd` as one backward pass (both
gradients and the bias's). Totals weigh each shape by how often the U-Net uses it. The last line sets
the totals against this machine's float32 matmul rate (one 3072³ product by XLA, timed in the same run):
the FLOP/s the convolutions reach, and the images/s a train step whose only cost were its convolutions
could reach.

Read it with care: a layer alone is not a layer in the train step (experiments/throughput.md, section
5: the swapped kernel gradient is faster alone and slower in the step).
"""

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from cfg import build, parallel  # noqa: E402
from cfg.models import onednn_conv  # noqa: E402
from configs import fashion_mnist  # noqa: E402

import ablate_conv_grads  # noqa: E402  (beside this script)
import interleaved  # noqa: E402

BATCH = 64

_PEER = r'''
import json, sys, time, torch
def best(f, steps):
  f(); times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps): f()
    times.append((time.perf_counter() - start) / steps)
  return min(times)
out = []
steps = int(sys.argv[1])
for height, cin, cout, k in json.loads(sys.stdin.readline()):
  conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
  x = torch.randn(%d, cin, height, height, requires_grad=True)
  g = torch.randn(%d, cout, height, height)
  with torch.no_grad():
    fwd = best(lambda: conv(x), steps)
  y = conv(x)
  def bwd():
    x.grad = conv.weight.grad = conv.bias.grad = None
    torch.autograd.backward(y, g, retain_graph=True)
  out.append(dict(fwd=fwd, bwd=best(bwd, steps)))
print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(), layers=out)))
''' % (BATCH, BATCH)


def unet_convolutions():
  """{(H, I, O, K): count} of the default U-Net's convolutions at batch 64 (all stride 1, 'SAME')."""
  config = fashion_mnist.get_config()
  config.model.conv_impl = 'xla'  # lax.conv_general_dilated in the jaxpr
  model = build.model_from_config(config)
  args = (jnp.zeros((BATCH, 28, 28, 1)), jnp.zeros((BATCH,)), jnp.zeros((BATCH,), jnp.int32))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  counts = collections.Counter()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        (b, h, w, i), (k, _, _, o) = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        if tuple(eqn.params['window_strides']) != (1, 1) or h != w:
          raise ValueError(f'not a stride-1 square convolution: {eqn}')
        counts[(h, i, o, k)] += 1
      for value in eqn.params.values():
        inner = getattr(value, 'jaxpr', None)
        if inner is not None:
          walk(getattr(inner, 'jaxpr', inner))

  walk(jax.make_jaxpr(lambda p: model.apply(p, *args))(params).jaxpr)
  return dict(sorted(counts.items()))


def best_seconds(fn, inputs, steps):
  compiled = jax.jit(fn).lower(*inputs).compile(parallel.compiler_options('cpu'))
  out = jax.block_until_ready(compiled(*inputs))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(steps):
      result = compiled(*inputs)
    jax.block_until_ready(result)
    times.append((time.perf_counter() - start) / steps)
  return min(times), out


def time_layer(height, cin, cout, k, steps):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (BATCH, height, height, cin))
  kernel = jax.random.normal(keys[1], (k, k, cin, cout)) / (k * k * cin) ** 0.5
  g = jax.random.normal(keys[2], (BATCH, height, height, cout))
  conv = lambda x, kernel: lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                                   dimension_numbers=ablate_conv_grads.NHWC)
  row = {'fwd': best_seconds(conv, (x, kernel), steps)[0],
         'dx': best_seconds(lambda x, kernel, g: jax.vjp(lambda a: conv(a, kernel), x)[1](g)[0],
                            (x, kernel, g), steps)[0]}
  row['dk'], dk = best_seconds(lambda x, kernel, g: jax.vjp(lambda w: conv(x, w), kernel)[1](g)[0],
                               (x, kernel, g), steps)
  if onednn_conv.unavailable_reason() is None:
    conv = lambda x, kernel: onednn_conv.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                                             dimension_numbers=ablate_conv_grads.NHWC)
    row['onednn_fwd'], y = best_seconds(conv, (x, kernel), steps)
    row['onednn_dx'], dx = best_seconds(lambda x, kernel, g: jax.vjp(lambda a: conv(a, kernel), x)[1](g)[0],
                                        (x, kernel, g), steps)
    row['onednn_dk'], dk_onednn = best_seconds(
        lambda x, kernel, g: jax.vjp(lambda w: conv(x, w), kernel)[1](g)[0], (x, kernel, g), steps)
    plain_y = best_seconds(lambda x, kernel: lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=ablate_conv_grads.NHWC), (x, kernel), 1)[1]
    plain_dx = jax.vjp(lambda a: lax.conv_general_dilated(a, kernel, (1, 1), 'SAME',
                                                          dimension_numbers=ablate_conv_grads.NHWC), x)[1](g)[0]
    row['onednn_rel_diff'] = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                                 for a, b in ((y, plain_y), (dx, plain_dx), (dk_onednn, dk)))
  if cout < cin:
    row['dk_swapped'], swapped = best_seconds(
        lambda x, g: ablate_conv_grads.swapped_kernel_grad(x, g, 'SAME', kernel.shape), (x, g), steps)
    row['dk_swapped_rel_diff'] = float(jnp.max(jnp.abs(swapped - dk)) / jnp.max(jnp.abs(dk)))
  return row


def matmul_rate(size=3072, steps=5):
  """This machine's float32 FLOP/s on one large matrix product (size³ multiply-adds) by XLA, best of
  3 rounds of `steps`: the rate a compute-bound convolution can hope for here."""
  a, b = (jax.random.normal(key, (size, size)) for key in jax.random.split(jax.random.key(0)))
  return 2 * size ** 3 / best_seconds(jnp.matmul, (a, b), steps)[0]


def conv_flops(height, cin, cout, k):
  """FLOPs of one stride-1 'SAME' convolution at batch 64 (2 per multiply-add); its input and kernel
  gradients take as many each."""
  return 2 * BATCH * height * height * cin * cout * k * k


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--torch_python', default='', help='python of a venv with torch (optional)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--pause_group', type=int, default=0,
                      help='a process group to SIGSTOP while timing (SIGCONT after)')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  layers = unet_convolutions()
  if args.pause_group:
    os.killpg(args.pause_group, signal.SIGSTOP)
  try:
    rows = {shape: time_layer(*shape, args.steps) for shape in layers}
    matmul = matmul_rate()
    peer = None
    if args.torch_python:
      run = subprocess.run([args.torch_python, '-c', _PEER, str(args.steps)], capture_output=True, text=True,
                           input=json.dumps(list(layers)) + '\n', check=True)
      peer = json.loads(run.stdout.strip().splitlines()[-1])
      for row, theirs in zip(rows.values(), peer['layers']):
        row.update({f'peer_{name}': value for name, value in theirs.items()})
  finally:
    if args.pause_group:
      os.killpg(args.pause_group, signal.SIGCONT)

  ms = lambda s: f'{1e3 * s:.2f}' if s is not None else ''
  onednn = [name for name in ('onednn_fwd', 'onednn_dx', 'onednn_dk') if name in next(iter(rows.values()))]
  columns = ['fwd', 'dx', 'dk', 'dk_swapped'] + onednn + (['peer_fwd', 'peer_bwd'] if peer else [])
  print(f'each convolution alone, batch {BATCH}, ms (best of 3 rounds of {args.steps}); jax {jax.__version__}'
        + (f', torch {peer["torch"]} ({peer["threads"]} threads)' if peer else ''))
  print('| H×W | in → out | k | uses | ' + ' | '.join(columns) + ' | dk / dk swapped | rel. diff |')
  print('|---|---|---|---|' + '---|' * (len(columns) + 2))
  totals = collections.Counter()
  for (height, cin, cout, k), row in rows.items():
    uses = layers[(height, cin, cout, k)]
    for name in columns:
      totals[name] += uses * row.get(name, row['dk'] if name == 'dk_swapped' else 0.0)
    ratio = f'{row["dk"] / row["dk_swapped"]:.2f}' if 'dk_swapped' in row else ''
    diff = f'{row["dk_swapped_rel_diff"]:.0e}' if 'dk_swapped' in row else ''
    print(f'| {height}×{height} | {cin} → {cout} | {k} | {uses} | '
          + ' | '.join(ms(row.get(name)) for name in columns) + f' | {ratio} | {diff} |')
  print(f'| total | | | {sum(layers.values())} | ' + ' | '.join(ms(totals[name]) for name in columns)
        + ' | | |')
  print('(total dk_swapped: the swapped form where it applies, autodiff\'s elsewhere)')
  if onednn:
    print(f'XLA fwd + dx + dk {1e3 * (totals["fwd"] + totals["dx"] + totals["dk"]):.1f} ms, oneDNN '
          f'{1e3 * sum(totals[name] for name in onednn):.1f} ms; largest difference from XLA\'s, relative to its '
          f'largest entry: {max(row["onednn_rel_diff"] for row in rows.values()):.1e}')
  # The ceiling these set: the train step computes every convolution's fwd, dx and dk once.
  flops = 3 * sum(uses * conv_flops(*shape) for shape, uses in layers.items())
  fastest = 'oneDNN' if onednn else 'XLA'
  seconds = sum(totals[name] for name in onednn) if onednn else totals['fwd'] + totals['dx'] + totals['dk']
  print(f'this machine\'s float32 matmul (3072³, XLA): {matmul / 1e9:.1f} GFLOP/s. The convolutions\' fwd + dx + '
        f'dk: {flops / 1e9:.2f} GFLOP per train step, by {fastest} at {flops / seconds / 1e9:.1f} GFLOP/s '
        f'({flops / seconds / matmul:.2f}× the matmul rate); a train step of batch {BATCH} that spent nothing '
        f'else would run at most {BATCH / seconds:.0f} images/s ({BATCH * matmul / flops:.0f} at the matmul rate)')
  if peer:
    ours = totals['fwd'] + totals['dx'] + totals['dk']
    print(f'project fwd + dx + dk {1e3 * ours:.1f} ms, peer fwd + bwd '
          f'{1e3 * (totals["peer_fwd"] + totals["peer_bwd"]):.1f} ms')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**interleaved.benchmark_provenance(), 'torch': peer and peer['torch'], 'batch': BATCH,
                 'matmul_flops_per_second': matmul, 'train_step_conv_flops': flops,
                 'seconds': [{'height': h, 'in': i, 'out': o, 'k': k, 'uses': layers[(h, i, o, k)], **row}
                             for (h, i, o, k), row in rows.items()]}, f, indent=1)


if __name__ == '__main__':
  main()
