"""The project's compile options change kernels, not results."""

import jax
import jax.numpy as jnp
import numpy as np

from cfg import build, parallel, train_state
from configs import smoke
from tests.test_unet import perturbed


def test_cpu_programs_keep_ynnpack_for_dots_only_and_other_backends_get_no_options():
  assert parallel.compiler_options('cpu') == parallel.CPU_COMPILER_OPTIONS
  assert parallel.compiler_options('gpu') == {}
  assert parallel.compiler_options('tpu') == {}


def _perturbed_state(config):
  model = build.model_from_config(config)
  optimizer = build.optimizer_from_config(config.optim)
  state = jax.jit(lambda: train_state.init_state(config, model, optimizer))()
  # Zero-initialised output layers would make every output 0 and hide any difference.
  return model, perturbed(state.params, seed=3)


def test_forward_and_gradients_with_the_cpu_options_equal_xla_defaults():
  config = smoke.get_config()
  config.model.dropout = 0.0
  model, params = _perturbed_state(config)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)
  logsnr = jnp.asarray([-4.0, 0.0, 2.0, 8.0])
  labels = jnp.asarray([0, 3, 9, 10], jnp.int32)
  target = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)

  def loss_and_grads(params):
    loss = lambda p: jnp.mean(jnp.square(model.apply(p, z, logsnr, labels) - target))
    return model.apply(params, z, logsnr, labels), jax.grad(loss)(params)

  lowered = jax.jit(loss_and_grads).lower(params)
  tuned, default = lowered.compile(parallel.compiler_options('cpu')), lowered.compile()
  (eps_tuned, grads_tuned), (eps_default, grads_default) = tuned(params), default(params)
  assert float(jnp.max(jnp.abs(eps_default))) > 0.1
  np.testing.assert_allclose(eps_tuned, eps_default, rtol=1e-5, atol=1e-5)
  for g_tuned, g_default in zip(jax.tree.leaves(grads_tuned), jax.tree.leaves(grads_default)):
    scale = float(jnp.max(jnp.abs(g_default)))
    np.testing.assert_allclose(g_tuned, g_default, rtol=1e-4, atol=1e-5 * max(scale, 1e-3))
