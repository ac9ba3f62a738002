"""Data parallelism over every device of every process: one `Mesh` axis named 'data'.

The train state is replicated (`P()`), batches are split along their first axis (`P('data')`).
This is what `pmap` did, written as `jax.jit` with explicit shardings; the same program runs on
one CPU, 8 forced CPU devices, a GPU node or a TPU slice.
"""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(*, coordinator_address=None, num_processes=None, process_id=None):
  """Starts JAX's multi-host runtime. With no arguments JAX detects TPU pods, SLURM and
  Open MPI itself; on other clusters pass the coordinator explicitly."""
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def data_mesh(devices=None):
  """A 1-D mesh over all devices of all processes, in the order jax.make_mesh picks for the topology
  (`devices`: an explicit order instead). Nothing may assume that a process's devices are adjacent in it:
  whatever rows a process gives `global_batch`, they land on its own devices."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch_size, mesh, what='batch_size'):
  """Raises a clear error when a global batch cannot be split evenly over the devices."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the {num_devices} devices of this run; '
        f'choose a multiple of {num_devices}.')


def global_batch(local_batch, mesh):
  """Assembles the global, 'data'-sharded array from each process's rows of the batch."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
  """Gathers a (possibly multi-process) array tree to numpy on every host."""
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
