"""torch.nn.functional.interpolate's bicubic resampling as matrices (numpy only), for ports of torch evaluators.

A separable resize is out = R_h · x · R_wᵀ per channel, with R [out, in] built here to mirror ATen's CPU
kernels (UpSampleKernel.cpp), because JAX's `jax.image.resize('bicubic')` is Keys' a = −0.5 kernel with
other edge handling and neither of torch's two bicubic modes:

  antialias=False (`upsample_bicubic2d`): source x = (i + ½)·scale − ½, taps ⌊x⌋ − 1 … ⌊x⌋ + 2 clamped to
    the edge, cubic convolution with A = −0.75; scale = in/out, or 1/scale_factor when one is given.
  antialias=True (`_upsample_bicubic2d_aa`, PIL's filter): centre c = (i + ½)·scale, support
    2·max(scale, 1), taps ⌊c − support + ½⌋ … ⌊c + support + ½⌋ inside the image, weights
    K((j − c + ½)/max(scale, 1)) with Keys' a = −0.5, normalised to sum 1 (also when upsampling).

Coordinates are computed in float32, as ATen computes them for float32 input (at 512 → 224 float64
coordinates would differ from torch's by ~5e-5 relative); weights and sums are float64.

DINOv2 needs both: EDM2 resizes images with antialias=True, and DINOv2 interpolates its position
embedding with antialias=False and scale_factor = (grid + 0.1)/M.
"""

import numpy as np


def _cubic(x, a):
  """Keys' cubic convolution kernel with parameter a, at |x|."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size, out_size, *, scale_factor=None):
  """R [out, in] of F.interpolate(mode='bicubic', align_corners=False, antialias=False) along one axis."""
  scale = np.float32(in_size / out_size if scale_factor is None else 1.0 / scale_factor)
  source = ((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5))
  source = source.astype(np.float64)
  first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  t = np.clip(source - first, 0.0, 1.0)
  matrix = np.zeros((out_size, in_size))
  for tap in range(4):  # taps first − 1 … first + 2 at distances t + 1, t, 1 − t, 2 − t
    index = np.clip(first - 1 + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), _cubic(t + 1 - tap, -0.75))
  return matrix


def antialiased_bicubic_matrix(in_size, out_size):
  """R [out, in] of F.interpolate(mode='bicubic', align_corners=False, antialias=True) along one axis."""
  scale = np.float32(in_size / out_size)
  stretch = max(float(scale), 1.0)
  support = 2.0 * stretch
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    centre = float(scale * np.float32(i + 0.5))
    low = max(int(centre - support + 0.5), 0)  # int() truncates toward 0, as ATen's cast
    high = min(int(centre + support + 0.5), in_size)
    taps = np.arange(low, high)
    weights = _cubic((taps - centre + 0.5) / stretch, -0.5)
    total = weights.sum()
    matrix[i, low:high] = weights / total if total != 0 else weights
  return matrix
