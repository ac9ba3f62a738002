"""Data parallelism over every device of every process: one `Mesh` axis named 'data'.

The train state is replicated (`P()`), batches are split along their first axis (`P('data')`).
This is what `pmap` did, written as `jax.jit` with explicit shardings; the same program runs on
one CPU, 8 forced CPU devices, a GPU node or a TPU slice.
"""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost

from cfg.errors import USER_ERRORS, ProcessZeroUserError

DATA_AXIS = 'data'

# XLA:CPU hands convolutions to YNNPACK by default; its kernel-gradient and input-gradient
# convolutions run several times slower than XLA's Eigen path on the U-Net's shapes, so CPU
# programs keep YNNPACK for dots and reductions only. Same arithmetic, other kernels: the train step
# and the forward pass agree to float32 rounding (tests/test_parallel.py); on the 2-core CPU the
# train step is 1.12–1.27× and the forward pass 1.52–1.60× as fast without YNNPACK's convolutions,
# and YNNPACK's reductions (the norm's per-channel sums) add 1.10–1.11× on the train step
# (experiments/throughput.md, experiments/bench_xla_options.py).
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def compiler_options(backend=None):
  """XLA options for every program of the project on `backend` (default: JAX's default backend)."""
  return dict(CPU_COMPILER_OPTIONS) if (backend or jax.default_backend()) == 'cpu' else {}


def jit(fun, **kwargs):
  """jax.jit with `compiler_options()`: the project's programs all compile this way."""
  return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


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
  mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)
  open_collectives(mesh)
  return mesh


# Barriers wait this long for the slowest process (one may be compiling, restoring or writing files).
BARRIER_TIMEOUT_S = 3600
_barrier_count = itertools.count()
_open_groups = set()


def sync(name, timeout_s=BARRIER_TIMEOUT_S):
  """All processes wait here for all the others (after process 0 wrote something they must see); a no-op
  with one. The coordination service's barrier, not a device program, so no collective's timeout
  applies. Processes pass the same barriers in the same order."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=f'cfg.{next(_barrier_count)}.{name}', timeout_ms=timeout_s * 1000)


def open_collectives(mesh):
  """Sets up the cross-process communicators of `mesh` and of jax.devices() (the order of
  multihost_utils and orbax) now, with every process arriving together.

  On CPU the processes talk through gloo, which sets up a device group's communicator on its first
  collective and gives up when a peer has not arrived within 30 seconds (a fixed limit of XLA's): a
  process still compiling a large program, or process 0 still writing files, is that late. Once set
  up, a communicator's collectives wait for a late peer (tests/test_multihost.py has one 35 s late).
  Other platforms set theirs up without that limit.
  """
  if jax.process_count() == 1 or mesh.devices.flat[0].platform != 'cpu':
    return
  for devices in (list(mesh.devices.flat), jax.devices()):
    group = tuple(d.id for d in devices)
    if group in _open_groups:
      continue
    group_mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)
    here = sum(d.process_index == jax.process_index() for d in devices)
    ones = jax.make_array_from_process_local_data(batch_sharded(group_mesh), np.ones(here, np.float32))
    sync('open_collectives')
    total = jax.jit(jnp.sum, out_shardings=replicated(group_mesh))(ones)  # an all-reduce over the group
    assert int(total.addressable_data(0)) == len(devices), (total, group)
    _open_groups.add(group)


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


def stacked_batch_sharded(mesh):
  """[n, B, …]: n batches, each split along 'data' as one batch is."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def global_batch(local_batch, mesh, sharding=None):
  """Assembles the global array (default: 'data'-sharded) from each process's rows of the batch."""
  sharding = sharding or batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
  """Gathers a (possibly multi-process) array tree to numpy on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def is_writer():
  """Process 0 writes every file of a run; the others only compute."""
  return jax.process_index() == 0


class ProcessZeroError(Exception):
  """What process 0 raised while deciding, re-raised on the other processes (the message is its)."""


def decided_by_process_zero(decide):
  """decide() — which rounds or files are left, whether a folder matches — runs on process 0 only, and
  its JSON value reaches every process, so all enter the next collective program with the same plan.

  An exception on process 0 is re-raised there; the others raise ProcessZeroError (a user error when
  process 0's was one) with its message instead of waiting forever.
  """
  if jax.process_count() == 1:
    return decide()
  error, payload = None, {}
  if jax.process_index() == 0:
    try:
      payload = {'value': decide()}
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, after the others know)
      error, payload = e, {'error': f'{type(e).__name__}: {e}', 'user': isinstance(e, USER_ERRORS)}
  encoded = np.frombuffer(json.dumps(payload, default=float).encode(), np.uint8)
  sync('decided_by_process_zero')  # process 0 may have decided for minutes
  length = int(multihost_utils.broadcast_one_to_all(np.int32(encoded.size)))
  buffer = np.zeros(length, np.uint8)
  if jax.process_index() == 0:
    buffer[:] = encoded
  received = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())
  if error is not None:
    raise error
  if 'error' in received:
    raise (ProcessZeroUserError if received['user'] else ProcessZeroError)(
        f'process 0 stopped: {received["error"]}')
  return received['value']
