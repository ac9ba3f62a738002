"""Feature extraction over a stream of image batches at one fixed batch size (one compile)."""

import numpy as np


def map_padded(fn, image_batches, *, batch_size):
  """Concatenated numpy outputs of fn (a tuple of [B, …] arrays) over batches of ≤ batch_size images.

  A short batch is padded with copies of its last image to batch_size (outputs for the padding are
  dropped), so a jitted fn compiles once.
  """
  outputs = []
  for images in image_batches:
    images = np.asarray(images)
    count = images.shape[0]
    if count == 0:
      continue
    if count > batch_size:
      raise ValueError(f'Got a batch of {count} images, more than batch_size={batch_size}; '
                       'split the input into smaller batches or raise batch_size.')
    padded = np.concatenate([images, np.repeat(images[-1:], batch_size - count, axis=0)])
    outputs.append(tuple(np.asarray(output[:count]) for output in fn(padded)))
  if not outputs:
    raise ValueError('compute_features got no images.')
  return tuple(np.concatenate(parts) for parts in zip(*outputs))
