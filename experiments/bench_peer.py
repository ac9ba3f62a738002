"""The default U-Net against diffusers' UNet2DModel of the same shape, measured side by side.

python experiments/bench_peer.py --torch_python=/path/to/torch-venv/bin/python [--repeats 5]
    [--side=project] [--jax_python=/path/to/other-jax-venv/bin/python] [--checkout=/path/to/other/checkout]

Set up the peer once, in its own venv (the project and its tests never import torch):

  python3 -m venv ../torchvenv && ../torchvenv/bin/pip install -r experiments/requirements-peer.txt

Both run on the CPU with this machine's cores. The rounds alternate: a JAX round, then a torch
round in a worker process that waits while JAX runs, so the two never compete for the cores.
Two tables: the minimum over rounds (the least disturbed), then the median (what a noisy machine gives
most of the time); ratios are project ÷ peer throughput. The project runs as it is and as it was before
each change that mattered (`SIDES`: XLA's default CPU options; flax's threefry dropout mask; flax's
GroupNorm under autodiff; YNNPACK for dots only, before its reductions were added; XLA's own convolutions,
before oneDNN's), interleaved in the same rounds; `--side` (repeated) keeps only some of them.
`--jax_python` adds the project's own programs run by another interpreter (a venv with another
jax/jaxlib, e.g. a newer one on a newer Python) as one more side, in a worker process like the peer's.
`--checkout` does the same for another checkout of the project (e.g. `git worktree add ../before <commit>`, with
its oneDNN library built there): its own bench_peer.py and cfg run as one more side, so a change that cannot be
swapped in (compiled code) is measured against the commit before it in the same rounds.

- train step: batch 64, forward + backward + Adam (the project's full step: Algorithm 1's loss,
  clipping, EMA; the peer's: ε-MSE, Adam);
- forward: batch 128; guided step: one call at 2B = 256 ([c; ∅]), against 128 for the unguided
  step (the ratio guided / unguided must stay ≤ 2.05);
- the same two as the project's sampler runs them with configs/fashion_mnist.py's
  sampling.max_network_batch (calls of at most that many rows in sequence), for this interpreter's sides
  only (the peer and the other checkout's programs are whole calls);
- FLOPs per image: XLA's cost analysis of the lowered forward, torch's FlopCounterMode.

The peer (diffusers 0.42): channels 16/32/64, one block per level, attention at 7×7 (head 32),
8 groups, scale-shift conditioning, class embedding of 11 rows: 717,505 parameters.
"""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cfg import build, guidance, parallel, samplers, train, train_state  # noqa: E402
from cfg.models import layers, onednn_conv  # noqa: E402
from configs import fashion_mnist  # noqa: E402

TRAIN_BATCH, FORWARD_BATCH = 64, 128
NETWORK_BATCH = fashion_mnist.get_config().sampling.max_network_batch

_PEER = r'''
import json, sys, time
import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode
torch.manual_seed(0)
model = UNet2DModel(
    sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
    down_block_types=('DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D'), norm_num_groups=8,
    resnet_time_scale_shift='scale_shift', num_class_embeds=11, attention_head_dim=32, dropout=0.1)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
TB, FB = %d, %d
x, t, y = torch.randn(TB, 1, 28, 28), torch.rand(TB) * 999, torch.randint(0, 11, (TB,))
def train_step():
  model.train(); optimizer.zero_grad()
  loss = torch.mean((model(x, t, class_labels=y).sample - x) ** 2)
  loss.backward(); optimizer.step()
def forward(batch):
  model.eval()
  with torch.no_grad():
    model(torch.randn(batch, 1, 28, 28), torch.rand(batch) * 999,
          class_labels=torch.randint(0, 11, (batch,))).sample
with FlopCounterMode(display=False) as counter:
  forward(1)
info = dict(params=sum(p.numel() for p in model.parameters()), flops_per_image=counter.get_total_flops(),
            torch=torch.__version__, threads=torch.get_num_threads())
train_step(); forward(FB); forward(2 * FB)
print(json.dumps(info), flush=True)
for line in sys.stdin:
  start = time.perf_counter()
  {'train': train_step, 'forward': lambda: forward(FB), 'guided': lambda: forward(2 * FB)}[line.strip()]()
  print(time.perf_counter() - start, flush=True)
''' % (TRAIN_BATCH, FORWARD_BATCH)


def threefry_keep_mask(key, shape, rate):
  """The dropout mask the project drew before cfg.models.layers.dropout_keep_mask: flax's nn.Dropout,
  jax.random.bernoulli on threefry bits."""
  return jax.random.bernoulli(key, 1.0 - rate, shape)


def autodiff_group_norm_modulated(x, gamma, beta, scale, shift, groups, silu):
  """The norm the project ran before cfg.models.layers.group_norm_modulated: flax's nn.GroupNorm, then
  the scale-shift and SiLU, differentiated by autodiff."""
  y = nn.GroupNorm(num_groups=groups, epsilon=layers.GROUP_NORM_EPS, parent=None).apply(
      {'params': {'scale': gamma, 'bias': beta}}, x)
  y = y * (1.0 + scale[:, None, None]) + shift[:, None, None]
  return nn.silu(y) if silu else y


# The project as it was before each change that mattered, and now: XLA options and the layers.* functions
# swapped in while the programs are traced.
BEFORE_FUSED_NORM = {'dropout_keep_mask': threefry_keep_mask,
                     'group_norm_modulated': autodiff_group_norm_modulated}
YNNPACK_DOTS_ONLY = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
# A candidate: oneDNN instead of YNNPACK for the dots (any oneDNN fusion type with xla_cpu_use_onednn).
ONEDNN_DOTS = {'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
               'xla_cpu_use_onednn': True}
SIDES = {  # side: (XLA options, layers.* swaps, config.model.conv_impl)
    'XLA defaults, threefry dropout, autodiff GroupNorm': ({}, BEFORE_FUSED_NORM, 'xla'),
    'YNNPACK dots only, autodiff GroupNorm': (YNNPACK_DOTS_ONLY,
                                              {'group_norm_modulated': autodiff_group_norm_modulated}, 'xla'),
    'YNNPACK dots only': (YNNPACK_DOTS_ONLY, {}, 'xla'),
    'oneDNN dots': ({**parallel.compiler_options(), **ONEDNN_DOTS}, {}, 'xla'),
    'XLA convolutions': (parallel.compiler_options(), {}, 'xla'),
    'project': (parallel.compiler_options(), {}, 'auto'),
}


def project_programs(options, swaps=None, conv_impl='auto'):
  """{name: zero-argument callable that runs one program to completion}, and FLOPs per image.

  `options`: XLA compiler options for all three programs (parallel.compiler_options() or {});
  `swaps`: {name: function} in cfg.models.layers to use instead while the programs are traced (the
  dropout mask, the norm), e.g. `BEFORE_FUSED_NORM`; `conv_impl`: config.model.conv_impl ('xla': XLA's own
  convolutions, as before the oneDNN ones).
  """
  swaps = swaps or {}
  project = {name: getattr(layers, name) for name in swaps}
  for name, function in swaps.items():
    setattr(layers, name, function)
  try:
    return _project_programs(options, conv_impl)
  finally:
    for name, function in project.items():
      setattr(layers, name, function)


def _project_programs(options, conv_impl):
  config = fashion_mnist.get_config()
  config.model.conv_impl = conv_impl
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = jax.jit(lambda: train_state.init_state(config, model, optimizer))()
  rng = np.random.default_rng(0)
  batch = {'images': jnp.asarray(rng.uniform(-1, 1, (TRAIN_BATCH, 28, 28, 1)), jnp.float32),
           'labels': jnp.asarray(rng.integers(0, 10, TRAIN_BATCH), jnp.int32)}
  z = jnp.asarray(rng.standard_normal((FORWARD_BATCH, 28, 28, 1)), jnp.float32)
  logsnr = jnp.asarray(rng.uniform(-10, 10, FORWARD_BATCH), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, FORWARD_BATCH), jnp.int32)
  step = jax.jit(lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer,
                                                 config=config), donate_argnums=0)
  forward = jax.jit(lambda p, z, l, y: model.apply(p, z, l, y))
  guided = jax.jit(lambda p, z, l, y: guidance.guided_eps(
      lambda *a: model.apply(p, *a), z, l, y, guidance_weight=1.0, null_label=10))
  in_calls = lambda p: samplers.in_chunks(lambda *a: model.apply(p, *a), max_batch=NETWORK_BATCH)
  forward_chunked = jax.jit(lambda p, z, l, y: in_calls(p)(z, l, y))
  guided_chunked = jax.jit(lambda p, z, l, y: guidance.guided_eps(
      in_calls(p), z, l, y, guidance_weight=1.0, null_label=10))
  params = jax.tree.map(jnp.copy, state.params)  # the train step donates `state`
  config.model.conv_impl = 'xla'  # XLA's cost analysis counts no FLOPs in oneDNN's custom calls
  flops = jax.jit(build.model_from_config(config).apply).lower(
      params, z[:1], logsnr[:1], labels[:1]).cost_analysis()['flops']
  step = step.lower(state, batch).compile(options)
  forward = forward.lower(params, z, logsnr, labels).compile(options)
  guided = guided.lower(params, z, logsnr, labels).compile(options)
  forward_chunked = forward_chunked.lower(params, z, logsnr, labels).compile(options)
  guided_chunked = guided_chunked.lower(params, z, logsnr, labels).compile(options)
  holder = {'state': state}

  def run_train():
    holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready(metrics)

  programs = {'train': run_train,
              'forward': lambda: jax.block_until_ready(forward(params, z, logsnr, labels)),
              'guided': lambda: jax.block_until_ready(guided(params, z, logsnr, labels)),
              'forward_chunked': lambda: jax.block_until_ready(forward_chunked(params, z, logsnr, labels)),
              'guided_chunked': lambda: jax.block_until_ready(guided_chunked(params, z, logsnr, labels))}
  for run in programs.values():  # compile and warm up
    run()
  count = sum(x.size for x in jax.tree.leaves(params))
  return programs, dict(params=count, flops_per_image=flops, jax=jax.__version__, jaxlib=jax.lib.__version__,
                        python=platform.python_version(), convolutions=model.conv_impl,
                        onednn=onednn_conv.onednn_version() if model.conv_impl == 'onednn' else None)


def convolutions(info):
  """'onednn (oneDNN 2.6.3)', or the implementation alone (older checkouts and XLA's convolutions)."""
  version = info.get('onednn')
  return f'{info.get("convolutions")} (oneDNN {version})' if version else str(info.get('convolutions'))


def serve(programs, info):
  """The worker's loop (`--worker`): print `info` as JSON, then for each program name read from stdin
  run it and print its seconds (the protocol of the peer's worker)."""
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    start = time.perf_counter()
    programs[line.strip()]()
    print(time.perf_counter() - start, flush=True)


class Worker:
  """A process that runs one side's programs when asked, and waits otherwise."""

  def __init__(self, argv):
    self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = json.loads(self.process.stdout.readline())

  def run(self, name):
    self.process.stdin.write(name + '\n')
    self.process.stdin.flush()
    return float(self.process.stdout.readline())

  def close(self):
    self.process.stdin.close()
    self.process.wait()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args, cwd=ROOT):
  return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True).stdout.strip()


def other_project_worker(parser, jax_python, checkout, checkout_commit):
  """(side name, Worker) running the project's programs by `jax_python` (default: this interpreter) from
  `checkout` (default: this checkout)."""
  script = os.path.abspath(__file__)
  if checkout:
    script = os.path.join(os.path.abspath(checkout), 'experiments', 'bench_peer.py')
    if not os.path.isfile(script):
      parser.error(f'--checkout {checkout}: no experiments/bench_peer.py there; give the root of a checkout of '
                   f'this project')
  worker = Worker([jax_python or sys.executable, script, '--worker'])
  if checkout:
    return f'project at {checkout_commit[:7] or checkout}', worker
  return f'project, jax {worker.info["jax"]}', worker


def print_table(best, before, sides):
  """The side-by-side table (the `before` sides, the project, the peer; ratios to the peer) and each side's
  guided / unguided ratio, from `best` {side: {program: seconds}}."""
  header = ['', *before, 'project', 'peer', *(f'ratio, {side}' for side in before), 'ratio now']
  print('| ' + ' | '.join(header) + ' |')
  print('|---' * len(header) + '|')
  rows = [('train step, batch 64 (img/s)', 'train', TRAIN_BATCH),
          ('forward, batch 128 (ms)', 'forward', None), ('guided step, 2B = 256 (ms)', 'guided', None)]
  for label, name, images in rows:
    show = (lambda t: f'{images / t:.1f}') if images else (lambda t: f'{t * 1e3:.0f}')
    peer_time = best['peer'][name]
    print(f'| {label} | ' + ' | '.join(show(best[side][name]) for side in (*before, 'project', 'peer')) + ' | '
          + ' | '.join(f'{peer_time / best[side][name]:.2f}×' for side in (*before, 'project')) + ' |')
  for side in sides:
    print(f'guided / unguided step, {side}: {best[side]["guided"] / best[side]["forward"]:.3f}')


def write_json(args, started, checkout_commit, info, peer_info, other_info, best, times):
  """The run's numbers with their provenance, to args.json."""
  provenance = dict(command=' '.join(sys.argv), commit=git('rev-parse', 'HEAD'),
                    dirty=bool(git('status', '--porcelain', '--untracked-files=no')),
                    machine=f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}',
                    load_average=os.getloadavg(), wall_seconds=time.time() - started,
                    compiler_options=parallel.compiler_options(),
                    checkout=args.checkout and dict(path=os.path.abspath(args.checkout), commit=checkout_commit),
                    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
  with open(args.json, 'w') as f:
    json.dump(dict(provenance=provenance, project=info, peer=peer_info, other_jax=other_info, best_seconds=best,
                   seconds=times, repeats=args.repeats), f, indent=1)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--torch_python', help='python of a venv with torch + diffusers')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--json', default=None, help='also write the numbers here')
  parser.add_argument('--side', action='append', default=None,
                      help='a side of this interpreter to run, repeatable (default: all of SIDES: '
                           + '; '.join(SIDES) + ')')
  parser.add_argument('--jax_python', default=None,
                      help='python of a venv with another jax/jaxlib and this project installed: its '
                           '`project` programs run as one more side')
  parser.add_argument('--checkout', default=None,
                      help='another checkout of this project (e.g. a git worktree of an earlier commit): its '
                           '`project` programs run as one more side, by --jax_python or this interpreter')
  parser.add_argument('--pause_group', type=int, default=0,
                      help='a process group (e.g. a background evaluation) to SIGSTOP while the rounds are '
                           'timed and SIGCONT after; compiling runs beside it')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return serve(*project_programs(parallel.compiler_options()))
  if not args.torch_python:
    parser.error('--torch_python is required: the python of a venv with torch + diffusers '
                 '(python3 -m venv ../torchvenv && ../torchvenv/bin/pip install -r experiments/requirements-peer.txt)')
  chosen = args.side or list(SIDES)
  if 'project' not in chosen or any(side not in SIDES for side in chosen):
    parser.error(f'--side {chosen}: each must be one of SIDES ({"; ".join(SIDES)}), and project among them')
  started = time.time()
  workers = {}  # side: Worker, the other interpreter's project first, the peer last
  checkout_commit = git('rev-parse', 'HEAD', cwd=args.checkout) if args.checkout else None
  if args.jax_python or args.checkout:
    name, worker = other_project_worker(parser, args.jax_python, args.checkout, checkout_commit)
    workers[name] = worker
  other_jax = next(iter(workers), None)
  workers['peer'] = Worker([args.torch_python, '-c', _PEER])
  peer_info = workers['peer'].info
  sides = {side: project_programs(*SIDES[side]) for side in SIDES if side in chosen}
  info = sides['project'][1]

  times = time_rounds(sides, workers, args.repeats, args.pause_group)
  for worker in workers.values():
    worker.close()
  best = print_report(args, info, peer_info, sides, workers, other_jax, times)
  if args.json:
    write_json(args, started, checkout_commit, info, peer_info,
               workers[other_jax].info if other_jax else None, best, times)


NAMES, CHUNKED = ('train', 'forward', 'guided'), ('forward_chunked', 'guided_chunked')


def time_rounds(sides, workers, repeats, pause_group):
  """{side: {program: [seconds of each round]}}: each round runs every program on every side in turn (the
  chunked programs on this interpreter's sides only), with `pause_group` stopped meanwhile."""
  times = {side: {name: [] for name in NAMES + (CHUNKED if side in sides else ())} for side in (*sides, *workers)}
  if pause_group:
    os.killpg(pause_group, signal.SIGSTOP)
  try:
    for _ in range(repeats):
      for name in NAMES + CHUNKED:
        for side, (programs, _) in sides.items():
          start = time.perf_counter()
          programs[name]()
          times[side][name].append(time.perf_counter() - start)
        for side, worker in workers.items():
          if name in NAMES:
            times[side][name].append(worker.run(name))
  finally:
    if pause_group:
      os.killpg(pause_group, signal.SIGCONT)
  return times


def print_report(args, info, peer_info, sides, workers, other_jax, times):
  """Prints the sides, the tables of the best and the median rounds and the chunked programs; returns the
  best seconds {side: {program: s}}."""
  best = {side: {k: min(v) for k, v in t.items()} for side, t in times.items()}
  print(f'project: jax {info["jax"]}, {info["params"]:,} parameters, '
        f'{info["flops_per_image"] / 1e6:.0f} MFLOP/image forward (XLA), convolutions by {convolutions(info)}')
  print(f'peer:    torch {peer_info["torch"]} ({peer_info["threads"]} threads), diffusers UNet2DModel, '
        f'{peer_info["params"]:,} parameters, {peer_info["flops_per_image"] / 1e6:.0f} MFLOP/image '
        f'forward (FlopCounterMode)')
  print(f'{args.repeats} alternating rounds, best of each; ratio = project / peer throughput\n')
  if other_jax:
    print(f'{other_jax}: {args.checkout or args.jax_python}, {workers[other_jax].info["params"]:,} parameters, '
          f'{workers[other_jax].info["flops_per_image"] / 1e6:.0f} MFLOP/image forward (XLA), convolutions by '
          f'{convolutions(workers[other_jax].info)}')
  before = [side for side in sides if side != 'project'] + ([other_jax] if other_jax else [])
  print_table(best, before, (*sides, *workers))
  # On a noisy machine the best of a few rounds can flatter one side; the medians say how much to trust it.
  print(f'\nthe same, median of the {args.repeats} rounds:')
  print_table({side: {k: float(np.median(v)) for k, v in t.items()} for side, t in times.items()}, before,
              (*sides, *workers))
  print(f'\nin calls of at most {NETWORK_BATCH} rows (sampling.max_network_batch of configs/fashion_mnist.py), '
        f'best / median (ms):')
  for side in sides:
    shown = {name: (1e3 * min(times[side][name]), 1e3 * float(np.median(times[side][name])))
             for name in NAMES[1:] + CHUNKED}
    ratios = [shown['guided_chunked'][i] / shown['forward_chunked'][i] for i in (0, 1)]
    print(f'{side}: forward {shown["forward_chunked"][0]:.0f} / {shown["forward_chunked"][1]:.0f} '
          f'(whole call {shown["forward"][0]:.0f} / {shown["forward"][1]:.0f}); guided '
          f'{shown["guided_chunked"][0]:.0f} / {shown["guided_chunked"][1]:.0f} (whole call '
          f'{shown["guided"][0]:.0f} / {shown["guided"][1]:.0f}); guided / unguided {ratios[0]:.3f} / {ratios[1]:.3f}')
  return best


if __name__ == '__main__':
  main()
