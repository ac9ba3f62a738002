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


def test_network_calls_in_chunks_give_the_images_of_one_call():
  """sampling.max_network_batch = 6: the 3 weights × 2B = 8 rows of a guided call run as 4 calls of
  3 × 2 rows, in one loop more."""
  config = smoke_config()
  config.sampling.update(dict(batch_size=4, num_steps=3))
  model = build.model_from_config(config)
  params = train_state.init_state(config, model, build.optimizer_from_config(config.optim)).params
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  mesh = parallel.data_mesh()
  labels, whole = _images(config, params, model, mesh)
  loops = lambda: generate.make_sample_fn(model, config, mesh).lower(
      params, jax.random.PRNGKey(0), labels, np.arange(4), jax.numpy.zeros(3)).as_text().count('stablehlo.while')
  unchunked = loops()
  config.sampling.max_network_batch = 6
  assert loops() == unchunked + 1
  chunked_labels, chunked = _images(config, params, model, mesh)
  np.testing.assert_array_equal(chunked_labels, labels)
  assert np.mean(whole[0] != whole[2]) > 0.2
  # Calls of another batch size may sum in another order: rounded to uint8 a pixel may move by one level.
  assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1


def _labels_of_a_run(config, num_samples):
  """The labels sample_batches gives examples 0 … num_samples − 1 (a stand-in network: no sampling)."""
  fake_sample_fn = lambda params, key, labels, ids, weights: np.zeros((len(weights), len(labels), 2, 2, 1))
  return np.concatenate([labels for _, labels, _ in generate.sample_batches(
      fake_sample_fn, None, mesh=parallel.data_mesh(), config=config, weights=[0.0],
      num_samples=num_samples)])


def test_balanced_labels_hold_every_class_equally_often_for_any_batch_split():
  config = smoke_config()
  assert config.sampling.labels == 'balanced'  # the default
  config.sampling.batch_size = 7  # batches that cut the blocks of 10 classes anywhere
  labels = _labels_of_a_run(config, 43)
  for count in range(1, 44):  # any prefix: ⌊N/C⌋ or ⌈N/C⌉ of each class
    per_class = np.bincount(labels[:count], minlength=10)
    assert per_class.min() == count // 10 and per_class.max() == -(-count // 10), count
  config.sampling.batch_size = 43
  np.testing.assert_array_equal(_labels_of_a_run(config, 43), labels)  # one batch: the same labels
  ids = np.random.default_rng(0).permutation(43)  # a function of the example id alone
  np.testing.assert_array_equal(
      generate.labels_for(ids, num_classes=10, seed=config.sampling.seed, protocol='balanced'), labels[ids])
  assert len({tuple(labels[i:i + 10]) for i in range(0, 40, 10)}) == 4  # each block its own order
  other_seed = generate.labels_for(np.arange(40), num_classes=10, seed=2, protocol='balanced')
  assert np.mean(other_seed != labels[:40]) > 0.5


def test_uniform_labels_are_the_earlier_draws_bit_for_bit():
  config = smoke_config()
  config.update_from_flattened_dict({'sampling.labels': 'uniform', 'sampling.batch_size': 6})
  # The draw every evaluation made before sampling.labels existed, written out again.
  key = jax.random.PRNGKey(config.sampling.seed)
  earlier = [int(jax.random.randint(jax.random.fold_in(key, i), (), 0, 10)) for i in range(20)]
  np.testing.assert_array_equal(_labels_of_a_run(config, 20), earlier)
  assert np.bincount(earlier, minlength=10).max() >= 3  # uniform draws are not balanced here


def test_heun_s_per_step_guidance_state_is_named_where_users_read_the_evaluation():
  from configs import fashion_mnist
  config = fashion_mnist.get_config()
  config.update_from_flattened_dict({'sampling.sampler': 'heun', 'sampling.grid': 'edm', 'sampling.num_steps': 9,
                                     'guidance.method': 'apg'})
  assert '(guidance state per step)' not in generate.describe_evaluations(config)
  config.sampling.guide_state = 'step'
  assert generate.describe_evaluations(config).startswith('heun T=9 (edm grid), apg (guidance state per step): NFE')
  assert generate.sampler_kwargs(config)['solver_params'].guide_state_per_step is True
