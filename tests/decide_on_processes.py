"""Run as two processes (tests/test_multihost.py): what process 0 decides, and raises, reaches process 1."""

import sys

import jax


def main(argv):
  from cfg import parallel
  from cfg.errors import WorkdirError
  port, process_id = int(argv[1]), int(argv[2])
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id)
  decided = parallel.decided_by_process_zero(lambda: {'rounds': [0, 2], 'decided_on': jax.process_index()})
  print('decided', decided, flush=True)

  def refuse():
    raise WorkdirError('that folder holds another evaluation')
  parallel.decided_by_process_zero(refuse)


if __name__ == '__main__':
  main(sys.argv)
