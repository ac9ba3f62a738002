"""The package's imports point downward only: maths → model → sampling → workdir → modes → sweeps, API, commands.

A module may import its own layer, the layers below it, and the shared utilities; a mode never
imports another mode, so the library never depends on how it is run.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'cfg'
UTILITIES = {'cfg.errors', 'cfg.config_checks', 'cfg.parallel', 'cfg.data', 'cfg.files', 'cfg.metric_writer'}
LAYERS = [
    {'cfg.diffusion', 'cfg.guidance', 'cfg.solvers', 'cfg.losses'},    # maths
    {'cfg.models', 'cfg.build'},                                        # the network
    {'cfg.samplers', 'cfg.generate'},                                   # sampling
    {'cfg.checkpoints', 'cfg.train_state', 'cfg.trained'},              # what a workdir holds
    {'cfg.evaluation'},                                                 # metrics and their files
    {'cfg.train', 'cfg.sample', 'cfg.evaluate'},                        # the modes
    {'cfg.sweep', 'cfg.report', 'cfg.api', 'cfg.cli'},                  # sweeps, reports, API, commands
]
MODES = LAYERS[-2]


def _group(module):
  """'cfg.models.unet' → 'cfg.models'; the same for the evaluation and cli subpackages."""
  parts = module.split('.')
  return '.'.join(parts[:2]) if parts[1] in ('models', 'evaluation', 'cli') else module


def _imports(path):
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'cfg':
      names |= ({f'cfg.{a.name}' for a in node.names} if node.module == 'cfg' else {node.module})
    elif isinstance(node, ast.Import):
      names |= {a.name for a in node.names if a.name.split('.')[0] == 'cfg'}
  return {_group(n) for n in names}


MODULES = sorted(p for p in PACKAGE.rglob('*.py') if p.name != '__init__.py')


def test_every_module_has_a_layer():
  for path in MODULES:
    module = _group('.'.join(('cfg', *path.relative_to(PACKAGE).with_suffix('').parts)))
    assert module in UTILITIES or any(module in layer for layer in LAYERS), module


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path):
  module = _group('.'.join(('cfg', *path.relative_to(PACKAGE).with_suffix('').parts)))
  if module in UTILITIES:
    allowed = UTILITIES
  else:
    level = next(i for i, layer in enumerate(LAYERS) if module in layer)
    allowed = UTILITIES | set().union(*LAYERS[:level])
    if module not in MODES:
      allowed |= LAYERS[level]  # modes do not import each other
  bad = sorted(_imports(path) - allowed - {module})
  assert not bad, f'{module} imports {bad}, which are not below it'
