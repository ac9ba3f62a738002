"""Sampling programs: guidance weights split into programs of eval.weights_per_program give the images
of one program over all weights."""

import jax
import numpy as np

from cfg import build, generate, parallel, train_state
from tests.smoke_config import smoke_config


def _images(config, params, model, mesh):
  sample_fn = generate.make_sample_fn(model, config, mesh)
  (_, labels, images), = generate.sample_batches(sample_fn, params, mesh=mesh, config=config,
                                                 weights=(0.0, 1.0, 3.0), num_samples=4)
  return labels, images


def test_weights_in_programs_of_two_give_the_images_of_one_program():
  config = smoke_config()
  config.sampling.update(dict(batch_size=4, num_steps=3))
  model = build.model_from_config(config)
  params = train_state.init_state(config, model, build.optimizer_from_config(config.optim)).params
  leaves, tree = jax.tree.flatten(params)  # away from the zero-initialised output: ε̂ depends on w
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  mesh = parallel.data_mesh()
  labels, together = _images(config, params, model, mesh)
  config.eval.weights_per_program = 2  # programs (0, 1) and (3, 3): the padded weight is cut
  split_labels, split = _images(config, params, model, mesh)
  assert together.shape == split.shape == (3, 4, 28, 28, 1)
  assert np.mean(together[0] != together[2]) > 0.2  # the weights give different images (clipping keeps some)
  np.testing.assert_array_equal(split_labels, labels)
  # Only the vmapped width differs; rounded to uint8 a pixel may move by one level.
  assert np.abs(split.astype(int) - together.astype(int)).max() <= 1
  assert [(list(np.asarray(c)), n) for c, n in generate.weight_programs(jax.numpy.asarray([0., 1., 3.]), 2)] \
      == [([0., 1.], 2), ([3., 3.], 1)]
