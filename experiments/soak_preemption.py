"""Soak test of preemption: many kill -9 / SIGTERM-and-resume cycles of `launch.py` on the smoke preset.

Each cycle starts training in the same workdir and interrupts it with one of (chosen at random):
  kill9_random  kill -9 a random 0–4 s after the first reported step (steps, saves, deletions of old ones),
  kill9_write   kill -9 as soon as this run's checkpoint write is in progress (a new orbax temporary folder),
  sigterm       SIGTERM once a new step is reported, after a random delay (must save and exit 0).
Checked every cycle: the run resumes from the newest complete checkpoint on disk (from step 0 when
there is none), and a SIGTERM exits 0 having saved the step it reached. At the end one last run
finishes training, and its final state must equal an uninterrupted run's bitwise (same program,
1 CPU device), as must every loss any run logged to TensorBoard for any step; no step may be missing
from TensorBoard (the writer is flushed before each checkpoint, the furthest a later run goes back).
Optionally (--eval_cycles) the finished workdir is evaluated (10 rounds) with kill -9 a random 0–2 s
after a new round appears, then resumed; its result rows must equal an uninterrupted evaluation's.

  .venv/bin/python experiments/soak_preemption.py [--cycles 5] [--num_steps 30] [--seed 0] \
      [--eval_cycles 0] [--workdir /tmp/soak]
"""

import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)
TMP_SUFFIX = '.orbax-checkpoint-tmp'
# Every run compiles the same programs: share them through XLA's persistent cache, as the tests do.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'cfg-test-xla-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


class Run:
  """launch.py in a subprocess; its stdout lines are collected by a thread as they come."""

  def __init__(self, workdir, flags, log):
    self.lines = []
    self.process = subprocess.Popen(
        [sys.executable, '-u', 'launch.py', '--config=configs/smoke.py', f'--workdir={workdir}', *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)

  def text(self):
    return ''.join(self.lines)

  def wait_until(self, condition, timeout=600):
    """True once condition() holds; False when the process ended first."""
    deadline = time.time() + timeout
    while not condition():
      if self.process.poll() is not None or time.time() > deadline:
        return condition()
      time.sleep(0.001)
    return True

  def reported_step(self):
    steps = [int(m.group(1)) for m in re.finditer(r'^step (\d+)/', self.text(), re.M)]
    return max(steps, default=None)

  def end(self, sig=None, timeout=600):
    if sig is not None and self.process.poll() is None:
      self.process.send_signal(sig)
    self.process.wait(timeout=timeout)
    self._reader.join()
    return self.process.returncode


def complete_steps(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def writes_in_progress(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(n for n in os.listdir(folder) if TMP_SUFFIX in n) if os.path.isdir(folder) else []


def write_started_ns(workdir, name):
  """When orbax created the temporary folder `name` (its _CHECKPOINT_METADATA), 0 if unknown."""
  try:
    with open(os.path.join(workdir, 'checkpoints', name, '_CHECKPOINT_METADATA')) as f:
      return int(json.load(f)['init_timestamp_nsecs'])
  except (OSError, ValueError, KeyError):
    return 0


def resumed_from(text):
  found = re.search(r'resuming from the checkpoint at step (\d+)', text)
  return int(found.group(1)) if found else 0


def logged_losses(workdir):
  """[(step, loss)] of every loss event in every TensorBoard file of the workdir, duplicates kept."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.util import tensor_util
  pairs = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.*'))):
    for event in EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag == 'loss':
          pairs.append((event.step, float(tensor_util.make_ndarray(value.tensor))))
  return pairs


def final_state(config_flags, workdir):
  """The train state of the workdir's newest checkpoint, restored on this process's device."""
  from cfg import build, parallel, train_state
  from configs import smoke
  import jax
  config = smoke.get_config()
  for flag in config_flags:
    key, value = flag[len('--config.'):].split('=')
    section, field = key.split('.')
    config[section][field] = type(config[section][field])(value)
  state, checkpoints = train_state.restore_or_init(
      config, workdir, model=build.model_from_config(config),
      optimizer=build.optimizer_from_config(config.optim), mesh=parallel.data_mesh())
  checkpoints.close()
  return jax.device_get(state)


def cycle(workdir, flags, log, action, rng, *, num_steps):
  """One interrupted run; returns a record of what happened and what was checked."""
  expected_start = max(complete_steps(workdir), default=0)
  run = Run(workdir, flags, log)
  record = {'action': action, 'expected_resume': expected_start}
  if action == 'kill9_random':
    run.wait_until(lambda: run.reported_step() is not None)
    record['delay_s'] = round(float(rng.uniform(0.0, 4.0)), 2)
    run.wait_until(lambda: False, timeout=record['delay_s'])
    record['returncode'] = run.end(signal.SIGKILL)
  elif action == 'kill9_write':
    started_ns = time.time_ns()

    def new_write():  # a temporary folder left by an earlier kill stays until its step is saved again
      return any(write_started_ns(workdir, name) > started_ns for name in writes_in_progress(workdir))

    caught = run.wait_until(new_write)
    record['returncode'] = run.end(signal.SIGKILL)
    record['left_mid_write'] = writes_in_progress(workdir)
    record['caught_a_write'] = caught
  else:  # sigterm
    run.wait_until(lambda: (run.reported_step() or 0) > expected_start)
    record['delay_s'] = round(float(rng.uniform(0.0, 2.0)), 2)
    time.sleep(record['delay_s'])
    signalled = time.time()
    record['returncode'] = run.end(signal.SIGTERM)
    record['exit_after_sigterm_s'] = round(time.time() - signalled, 2)
    saved = re.search(r'SIGTERM: saved the checkpoint at step (\d+)', run.text())
    record['saved_step'] = int(saved.group(1)) if saved else None
    record['sigterm_ok'] = (record['returncode'] == 0 and saved is not None
                            and int(saved.group(1)) in complete_steps(workdir))
  record['reached_step'] = run.reported_step()
  started = bool(re.search(r'^(resuming|step )', run.text(), re.M))
  record['resumed_from'] = resumed_from(run.text()) if started else None
  record['resume_ok'] = record['resumed_from'] in (None, expected_start)
  record['complete_after'] = complete_steps(workdir)
  record['finished_training'] = record['reached_step'] == num_steps
  return record


def soak_training(args, root, log):
  flags = ['--config.train.preview_every=0', '--config.train.log_every=1',
           f'--config.train.num_steps={args.num_steps}', '--config.train.checkpoint_every=2',
           '--config.train.keep_checkpoints=2']
  reference, workdir = os.path.join(root, 'uninterrupted'), os.path.join(root, 'interrupted')
  run = Run(reference, flags, log)
  assert run.end() == 0, run.text()

  rng = np.random.default_rng(args.seed)
  records = []
  for index in range(args.cycles):
    action = str(rng.choice(['kill9_random', 'kill9_write', 'sigterm']))
    record = cycle(workdir, flags, log, action, rng, num_steps=args.num_steps)
    records.append(record)
    print(f'cycle {index + 1}: {json.dumps(record)}', flush=True)
    if record['finished_training']:
      shutil.rmtree(workdir)  # start over so every cycle interrupts something
      print('  (training had finished before the interruption; workdir cleared)', flush=True)

  last = Run(workdir, flags, log)
  assert last.end() == 0, last.text()
  final_resume = resumed_from(last.text())
  expected = dict(logged_losses(reference))
  logged = logged_losses(workdir)
  mismatched = [(s, v, expected.get(s)) for s, v in logged if expected.get(s) != v]
  missing = sorted(set(range(1, args.num_steps + 1)) - {s for s, _ in logged})
  a, b = final_state(flags, reference), final_state(flags, workdir)
  import jax
  unequal = sum(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  summary = {
      'cycles': len(records),
      'actions': {k: sum(r['action'] == k for r in records) for k in ('kill9_random', 'kill9_write', 'sigterm')},
      'resumes_from_newest_complete_checkpoint': sum(r['resume_ok'] for r in records),
      'runs_that_started_training': sum(r['resumed_from'] is not None for r in records),
      'sigterm_saved_and_exited_0': sum(bool(r.get('sigterm_ok')) for r in records if r['action'] == 'sigterm'),
      'kills_that_left_a_partial_write': sum(bool(r.get('left_mid_write')) for r in records),
      'last_run_resumed_from': final_resume,
      'last_run_expected_from': records[-1]['complete_after'][-1] if records[-1]['complete_after'] else 0,
      'final_state_leaves_unequal': unequal,
      'logged_losses': len(logged),
      'logged_losses_unequal_to_uninterrupted': mismatched,
      'steps_never_logged': missing,
  }
  ok = (summary['resumes_from_newest_complete_checkpoint'] == len(records) and unequal == 0
        and not mismatched and not missing and final_resume == summary['last_run_expected_from']
        and summary['sigterm_saved_and_exited_0'] == summary['actions']['sigterm'])
  return summary, ok


def soak_evaluation(args, root, log):
  """kill -9 an evaluation of the finished workdir at random moments, resume, compare with a clean one."""
  flags = ['--config.mode=eval', '--config.train.preview_every=0', f'--config.train.num_steps={args.num_steps}',
           '--config.sampling.num_samples=100', '--config.sampling.batch_size=10',
           f'--config.eval.feature_net_dir={os.path.join(ROOT, "experiments/fashion_mnist/feature_net")}']
  trained = os.path.join(root, 'uninterrupted')
  clean, killed = os.path.join(root, 'eval_clean'), os.path.join(root, 'eval_killed')
  for d in (clean, killed):
    shutil.copytree(os.path.join(trained, 'checkpoints'), os.path.join(d, 'checkpoints'))
  run = Run(clean, flags, log)
  assert run.end() == 0, run.text()
  rng = np.random.default_rng(args.seed + 1)
  records = []
  for _ in range(args.eval_cycles):
    rounds = lambda: len(glob.glob(os.path.join(killed, 'eval', '*', 'round_*.npz')))
    before = rounds()
    run = Run(killed, flags, log)
    run.wait_until(lambda: rounds() > before)  # rounds are being written: kill somewhere among them
    delay = float(rng.uniform(0.0, 2.0))
    run.wait_until(lambda: False, timeout=delay)
    code = run.end(signal.SIGKILL)
    after = rounds()
    records.append({'delay_s': round(delay, 2), 'returncode': code, 'rounds_before': before, 'rounds_after': after})
    print(f'eval kill: {json.dumps(records[-1])}', flush=True)
  run = Run(killed, flags, log)
  assert run.end() == 0, run.text()
  rows = [json.load(open(p))['rows'] for p in (glob.glob(os.path.join(d, 'eval', '*', 'results.json'))[0]
                                               for d in (clean, killed))]
  return {'eval_kills': records, 'eval_rows_equal': rows[0] == rows[1]}, rows[0] == rows[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--cycles', type=int, default=5)
  parser.add_argument('--num_steps', type=int, default=30)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--eval_cycles', type=int, default=0)
  parser.add_argument('--workdir', default=None, help='kept when given; a temporary folder otherwise')
  args = parser.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix='soak_preemption_')
  os.makedirs(root, exist_ok=True)
  print(f'{platform.machine()}, {os.cpu_count()} cores; workdirs under {root}', flush=True)
  start = time.time()
  with open(os.path.join(root, 'stderr.txt'), 'a') as log:
    summary, ok = soak_training(args, root, log)
    if args.eval_cycles:
      eval_summary, eval_ok = soak_evaluation(args, root, log)
      summary.update(eval_summary)
      ok = ok and eval_ok
  print(json.dumps(summary, indent=1))
  print(f'{"PASS" if ok else "FAIL"}; wall time {time.time() - start:.0f} s')
  if not args.workdir:
    shutil.rmtree(root)
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main()
