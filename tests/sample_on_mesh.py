"""Run by tests/test_multihost.py in each of two processes: guided samples of a fixed random smoke model on
a mesh whose device order alternates between the processes; process 0 saves (ids, labels, images).
Process 1 starts sampling LATE_S seconds after process 0 (as when it compiles more slowly).

python -m tests.sample_on_mesh PORT PROCESS_ID OUT.npz LATE_S
"""

import sys
import time

import jax
import numpy as np


def smoke_samples(mesh, num_samples=8):
  """(ids, labels, uint8 images [K, N, …]) of the smoke model with fixed random parameters."""
  from cfg import build, generate, train_state
  from tests.smoke_config import smoke_config
  config = smoke_config()
  config.sampling.update(dict(batch_size=num_samples, num_steps=3))
  model = build.model_from_config(config)
  params = train_state.init_state(config, model, build.optimizer_from_config(config.optim)).params
  leaves, tree = jax.tree.flatten(params)  # away from the zero-initialised output: images depend on labels
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  sample_fn = generate.make_sample_fn(model, config, mesh)
  (ids, labels, images), = generate.sample_batches(sample_fn, params, mesh=mesh, config=config,
                                                  weights=(0.0, 2.0), num_samples=num_samples)
  return ids, labels, images


def main(argv):
  from cfg import parallel
  port, process_id, out, late_s = int(argv[1]), int(argv[2]), argv[3], float(argv[4])
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id)
  by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
  mesh = parallel.data_mesh([d for pair in zip(*by_process) for d in pair])  # p0, p1, p0, p1
  assert [d.process_index for d in mesh.devices.flat] == [0, 1, 0, 1]
  if process_id == 1:
    time.sleep(late_s)
  ids, labels, images = smoke_samples(mesh)
  if jax.process_index() == 0:
    np.savez(out, ids=ids, labels=labels, images=images)


if __name__ == '__main__':
  main(sys.argv)
