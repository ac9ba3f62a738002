"""Interleaved timing rounds for the benchmark scripts: every program once per round, best round wins."""

import os
import signal
import time

import jax


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
