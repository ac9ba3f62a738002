"""The library in three calls — load a trained workdir, sample, evaluate — and the pure pieces under them.

    from cfg import api
    model = api.load('runs/fm')                                   # newest checkpoint; its own config
    out = model.sample([0, 1, 2, 3], w=[0.0, 1.0, 3.0], method='interval', sampler='heun', num_steps=9)
    out.images.shape, out.nfe                                     # (3, 4, 28, 28, 1) uint8, NFE per image
    rows = api.evaluate(out.images[1], out.labels, config=model.config)   # fd_fmnist, is_fmnist, …
    table = api.score(out, config=model.config)                   # one row per w, as the eval mode

These call what `launch.py --config.mode=sample|eval` calls (`cfg.trained`, `cfg.generate`,
`cfg.evaluate`), with the same noise: example i of seed s is the same image here and there.

The functional core is exported as it is, for your own `jax.jit` / `vmap`: `model.denoise` is the pure
ε(z, λ, labels) of the EMA params; `sample_images` is `cfg.samplers.sample`, which takes any such
function with a guidance method (`get_method`, `GuidanceParams`) and a solver (`SOLVERS`, `get_grid`).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from cfg import evaluate as evaluation
from cfg import files, generate, parallel, trained
from cfg.config_checks import check_config
from cfg.errors import MissingInputError
from cfg.evaluation import adm_io
from cfg.guidance import METHODS, GuidanceParams, get_method
from cfg.samplers import Evaluations, count_evaluations, num_steps_for_nfe, sample_sweep
from cfg.samplers import sample as sample_images
from cfg.solvers import GRIDS, SOLVERS, get_grid

__all__ = ['Model', 'Samples', 'load', 'evaluate', 'score', 'config_from_checkpoint', 'sample_images',
           'sample_sweep', 'count_evaluations', 'num_steps_for_nfe', 'get_method', 'GuidanceParams',
           'METHODS', 'SOLVERS', 'GRIDS', 'get_grid', 'Evaluations']

Denoiser = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def config_from_checkpoint(workdir: str, *, step: Optional[int] = None) -> ConfigDict:
  """The config a workdir's checkpoint was trained with (the newest, or `step`), on top of the current
  defaults (fields added since then keep their default values)."""
  from configs import default  # pylint: disable=g-import-not-at-top  (the package's own defaults)
  if not files.join(workdir, 'checkpoints').is_dir():
    raise MissingInputError(f'no checkpoints in {workdir}; train first: '
                            f'python launch.py --config=<config> --workdir={workdir}')
  step, stored = trained.stored_config(workdir, step=step)
  if stored is None:
    raise MissingInputError(f'no checkpoints in {workdir}; train first.')
  config = default.get_config()
  with config.unlocked():
    for section, fields in stored.items():
      if isinstance(fields, dict) and section in config:
        for field, value in fields.items():
          if field in config[section]:
            config[section][field] = value
      elif section in config:
        config[section] = fields
  return config


@dataclasses.dataclass(frozen=True)
class Samples:
  """images: uint8 [K, B, H, W, C] for the K weights `w` and B `labels`; nfe: evaluations per image."""
  images: np.ndarray
  labels: np.ndarray
  w: tuple
  nfe: Evaluations


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained class-conditional model: its config, network, EMA params and checkpoint step."""
  config: ConfigDict
  network: Any
  params: Any
  step: int
  mesh: Mesh

  @property
  def denoise(self) -> Denoiser:
    """ε̂(z [B, H, W, C], λ [B], labels [B]) of the EMA params; label `num_classes` is ∅."""
    return functools.partial(self.network.apply, self.params)

  def sampling_config(self, **settings: Any) -> ConfigDict:
    """The model's config with sampling/guidance `settings` (e.g. sampler='heun', method='interval',
    num_steps=9, logsnr_lo=-2.0); raises ConfigError with the same messages as launch.py."""
    config = self.config.copy_and_resolve_references()
    for name, value in settings.items():
      if value is None:
        continue
      section = ('guidance' if name == 'method' or name in config.guidance else
                 'sampling' if name in config.sampling else None)
      if section is None:
        raise ValueError(f'unknown sampling setting {name!r}; use a field of config.sampling or '
                         f'config.guidance (see configs/default.py).')
      config[section][name] = value
    config.mode = 'sample'
    check_config(config)
    return config

  def sample(self, labels: Sequence[int], *, w: Union[float, Sequence[float]] = 0.0,
             **settings: Any) -> Samples:
    """Guided samples of `labels` at each weight of `w` (one program for all of them).

    settings: any field of config.sampling or config.guidance (sampler, num_steps, nfe, grid, seed,
    batch_size, method, logsnr_lo, rescale, apg_eta, guide_workdir, …). Example i gets the noise of
    example id i, as in the sample mode.
    """
    rows = np.asarray(labels, np.int32)
    weights = tuple(float(x) for x in np.atleast_1d(np.asarray(w, np.float64)))
    settings.setdefault('batch_size', _batch_size(len(rows), self.mesh))
    config = self.sampling_config(**settings)
    sample_fn = trained.make_sample_fn(self.network, config, self.mesh)
    parts = list(generate.sample_batches(sample_fn, self.params, mesh=self.mesh, config=config,
                                         weights=weights, num_samples=len(rows), labels=rows))
    images = np.concatenate([images for _, _, images in parts], axis=1)
    return Samples(images=images, labels=np.concatenate([l for _, l, _ in parts]), w=weights,
                   nfe=generate.evaluations(config))


def _batch_size(count: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that holds `count` examples, at most 256."""
  devices = mesh.devices.size
  return devices * -(-min(count, 256) // devices)


def load(workdir: str, *, step: Optional[int] = None, mesh: Optional[Mesh] = None) -> Model:
  """The EMA model of `workdir`'s newest readable checkpoint (or `step`), on `mesh` (default: every
  device). No config file is needed: the checkpoint's own config rebuilds the network."""
  config = config_from_checkpoint(workdir, step=step)
  mesh = parallel.data_mesh() if mesh is None else mesh
  network, params, restored = trained.load_ema_params(config, workdir, mesh, step=step)
  return Model(config=config, network=network, params=params, step=restored, mesh=mesh)


def evaluate(images: Union[np.ndarray, str], labels: Optional[Sequence[int]] = None, *,
             config: ConfigDict) -> dict:
  """The metrics `launch.py --config.mode=eval` reports for one batch of uint8 images [N, H, W, C] (or
  an ADM sample batch .npz, whose labels it reads), against the reference `config.eval` names."""
  if isinstance(images, (str, bytes)) or hasattr(images, '__fspath__'):
    images, stored_labels = adm_io.read_sample_batch(images)
    labels = stored_labels if labels is None else labels
  batch = np.asarray(images)
  known = labels is not None
  classes = np.asarray(labels) if known else np.zeros(len(batch), np.int32)
  (row,) = _score(batch[None], classes, weights=[0.0], config=config)
  dropped = ('w', 's') if known else ('w', 's', 'class_accuracy')  # no labels: no accuracy
  return {k: v for k, v in row.items() if k not in dropped}


def score(samples: Samples, *, config: ConfigDict) -> list:
  """[{w, s, metric: value, …}] for every weight of `samples`, as `launch.py --config.mode=eval` scores
  its rounds (the same feature networks and reference, loaded once)."""
  return _score(samples.images, samples.labels, weights=list(samples.w), config=config)


def _score(images: np.ndarray, labels: np.ndarray, *, weights: list, config: ConfigDict) -> list:
  """The eval mode's rows of uint8 images [K, N, H, W, C] at weights [K]."""
  spaces = evaluation.feature_spaces(config)
  return evaluation.score_weights(spaces, weights, evaluation.score_images(spaces, images), labels,
                                  resamples=config.eval.bootstrap_resamples)
