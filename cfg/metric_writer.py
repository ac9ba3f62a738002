"""TensorBoard scalars, image grids and hparams (tensorboardX), plus a console progress line.

Only process 0 writes; other processes get a writer that does nothing.
"""

import time

import numpy as np


def image_grid(images, *, ncols):
  """[N, H, W, C] uint8 → one [rows·H, ncols·W, C] uint8 mosaic (blank cells are black)."""
  n, h, w, c = images.shape
  nrows = -(-n // ncols)
  grid = np.zeros((nrows * h, ncols * w, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, ncols)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
  return grid


class MetricWriter:
  """Writes under `logdir` when `enabled` (process 0); a no-op elsewhere."""

  def __init__(self, logdir, *, enabled=True):
    self.enabled = enabled
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(logdir=str(logdir), flush_secs=10)

  def scalars(self, step, scalars):
    if self.enabled:
      for name, value in scalars.items():
        self._writer.add_scalar(name, float(value), int(step))

  def image(self, step, name, grid):
    if self.enabled:
      self._writer.add_image(name, grid, int(step), dataformats='HWC')

  def hparams(self, hparams, metrics, *, name):
    if self.enabled:
      self._writer.add_hparams(hparams, metrics, name=name)

  def flush(self):
    if self.enabled:
      self._writer.flush()

  def close(self):
    if self.enabled:
      self._writer.close()


class Progress:
  """A console line per log step: step, scalars, images/s and the time left."""

  def __init__(self, *, total_steps, start_step, enabled=True):
    self.total_steps, self.start_step, self.enabled = total_steps, start_step, enabled
    self._start_time = time.time()

  def line(self, step, scalars):
    elapsed = time.time() - self._start_time
    done = max(step - self.start_step, 1)
    eta = elapsed / done * (self.total_steps - step)
    text = ' '.join(f'{k}={v:.4g}' for k, v in scalars.items())
    if self.enabled:
      print(f'step {step}/{self.total_steps} {text} eta={_duration(eta)}', flush=True)


def _duration(seconds):
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
