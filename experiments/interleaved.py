"""What the train-step benchmarks share: the default config's step and its inputs, and interleaved timing
rounds (every program once per round; the scripts report the best round)."""

import os
import platform
import signal
import sys
import time

import jax
import jax.numpy as jnp
import optax

from cfg import build, parallel, train, train_state
from cfg.evaluation import provenance
from configs import fashion_mnist

_IMPORTED = time.time()  # imported as a benchmark starts: its wall time counts from here


def default_train_step(batch_size, conv_impl='auto'):
  """(step, state, batch): `configs/fashion_mnist.py`'s train step as a plain function of (state, batch),
  an initialised state and a batch of `batch_size` normal images with labels 0–9. Wrap `step` in a new
  lambda before each jax.jit that must trace it afresh (jit caches traces per function object).
  `conv_impl`: config.model.conv_impl ('xla' where a script replaces lax.conv_general_dilated)."""
  config = fashion_mnist.get_config()
  config.model.conv_impl = conv_impl
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = jax.jit(lambda: train_state.init_state(config, model, optimizer))()
  batch = {'images': jax.random.normal(jax.random.key(1), (batch_size, 28, 28, 1)),
           'labels': jnp.arange(batch_size, dtype=jnp.int32) % 10}
  step = lambda s, b: train.train_step(s, b, model=model, optimizer=optimizer, config=config)
  return step, state, batch


def first_step_gradients(state):
  """The gradients of the train step that produced `state` from a fresh one: Adam's first moment ÷ (1 − b1).
  At step 0 the warmup's learning rate is 0, so the parameters after one step equal the initial ones and
  only the optimizer state (and the loss) tell whether two compiles of the step compute the same thing."""
  b1 = fashion_mnist.get_config().optim.b1
  adam, = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  return jax.tree.map(lambda m: m / (1.0 - b1), adam.mu)


def largest_relative_difference(tree, reference):
  """max over the leaves of max |a − b| ÷ max |b|."""
  return max(float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))
             for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))


def time_rounds(programs, inputs, *, rounds, steps, pause_group=0, warm_each_round=False):
  """{name: [seconds per call, one per round]} of `programs` ({name: compiled}) called on `inputs`.

  Each round runs every program `steps` times, one program after the other. `pause_group`: a process
  group (e.g. a background evaluation) stopped with SIGSTOP while the rounds run and continued after.
  `warm_each_round`: one untimed call before each program's timed calls.
  """
  times = {name: [] for name in programs}
  if pause_group:
    os.killpg(pause_group, signal.SIGSTOP)
  try:
    for _ in range(rounds):
      for name, program in programs.items():
        if warm_each_round:
          jax.block_until_ready(program(*inputs))
        start = time.perf_counter()
        for _ in range(steps):
          out = program(*inputs)
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - start) / steps)
  finally:
    if pause_group:
      os.killpg(pause_group, signal.SIGCONT)
  return times


def benchmark_provenance():
  """What a benchmark's JSON records beside its times: the command, the commit and whether tracked files
  differed from it, the machine, jax, the project's CPU compile options and the wall time so far."""
  commit, dirty = provenance.code_version()
  return {'command': ' '.join(sys.argv), 'commit': commit, 'dirty_tree': dirty,
          'machine': f'{platform.machine()}, {os.cpu_count()} CPUs', 'jax': jax.__version__,
          'compiler_options': parallel.compiler_options('cpu'), 'wall_seconds': time.time() - _IMPORTED}
