"""`launch.py --config.mode=sample`: N guided samples per weight from the latest checkpoint's EMA params.

Writes, per weight w, an ADM-format batch `w<w>.npz` (arr_0 uint8 NHWC, arr_1 labels, through
`cfg.evaluation.adm_io.write_sample_batch`) and a PNG grid under
`<workdir>/samples/<step, sampler, T, N, seed[, labels, method, grid]>/`, and `nfe.json` (network evaluations
per image next to T). Existing files are kept, never overwritten. With several processes, process 0
decides which weights are left and writes every file; all sample together.

Autoguidance's guide network is loaded by `cfg.trained.load_guide`.
"""

import numpy as np

from cfg import files, generate, parallel
from cfg.config_checks import guidance_weights
from cfg.evaluation.adm_io import write_sample_batch
from cfg.guidance import scale_from_weight
from cfg.metric_writer import image_grid
from cfg.trained import load_ema_params, make_sample_fn


def output_dir(config, workdir, step):
  s, g = config.sampling, config.guidance
  name = f'step{step}_{s.sampler}{generate.num_steps(config)}_n{s.num_samples}_seed{s.seed}'
  if s.labels != 'uniform':  # other labels, other samples: never kept in a folder of uniform ones
    name += f'_{s.labels}'
  if g.method != 'cfg':
    name += f'_{g.method}'
  if s.grid != 'uniform_u':
    name += f'_{s.grid}'
  return files.join(workdir, 'samples', name)


def run(config, workdir):
  """Samples `config.sampling.num_samples` images at each guidance weight; returns the output folder."""
  mesh = parallel.data_mesh()
  model, params, step = load_ema_params(config, workdir, mesh, step=config.eval.checkpoint_step)
  weights = guidance_weights(config)
  directory = output_dir(config, workdir, step)
  todo = parallel.decided_by_process_zero(
      lambda: [w for w in weights if not (directory / f'w{w:g}.npz').exists()])
  for w in sorted(set(weights) - set(todo)):
    print(f'w={w:g}: {directory}/w{w:g}.npz exists; kept as it is.')
  if not todo:
    return directory
  nfe = generate.evaluations(config)
  print(generate.describe_evaluations(config), flush=True)
  sample_fn = make_sample_fn(model, config, mesh)
  _, labels, images = zip(*generate.sample_batches(
      sample_fn, params, mesh=mesh, config=config, weights=todo,
      num_samples=config.sampling.num_samples))
  labels = np.concatenate(labels)
  images = np.concatenate(images, axis=1)
  if parallel.is_writer():
    _write_nfe(directory, config, nfe)
    for w, per_weight in zip(todo, images):
      path = directory / f'w{w:g}.npz'
      write_sample_batch(path, per_weight, labels)
      order = np.argsort(labels[:100], kind='stable')
      files.save_png(directory / f'w{w:g}.png', image_grid(per_weight[:100][order], ncols=10))
      print(f'w={w:g} (scale s=1+w={scale_from_weight(w):g}): {len(labels)} samples → {path}')
  parallel.sync('cfg.sample.written')
  return directory


def _write_nfe(directory, config, nfe):
  info = {'sampler': config.sampling.sampler, 'grid': config.sampling.grid, 'method': config.guidance.method,
          'num_steps': generate.num_steps(config), 'nfe_per_image': nfe.total, 'nfe_main': nfe.main,
          'nfe_guiding': nfe.ref}
  files.write_json(directory / 'nfe.json', info)
