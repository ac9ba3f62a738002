"""Runs one config: python launch.py --config=configs/<name>.py --workdir=DIR [--config.field=value …]

The command lives in cfg/cli/launch.py (also `python -m cfg.cli.launch` and, installed, `cfg-launch`).
"""

from cfg.cli import launch

if __name__ == '__main__':
  launch.run()
