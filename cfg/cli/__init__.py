"""The commands: `launch` (train / sample / eval one config) and `sweep` (a config's sweeps()).

Run them as `python launch.py …` / `python sweep.py …` from a checkout, `python -m cfg.cli.launch …`, or,
after `pip install -e .`, as `cfg-launch …` / `cfg-sweep …`: the same code each way.
"""
