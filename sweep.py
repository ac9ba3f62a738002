"""Runs, dry-runs or collects a sweep: python sweep.py --config=configs/<name>.py --sweep=NAME --root=DIR

The command lives in cfg/cli/sweep.py (also `python -m cfg.cli.sweep` and, installed, `cfg-sweep`).
"""

from cfg.cli import sweep

if __name__ == '__main__':
  sweep.run()
