"""oneDNN convolutions against XLA's: forward, input and kernel gradients, the whole U-Net, vmap, fallbacks.

Needs the library (`python -m cfg.cli.build_onednn_conv`, with g++ and libdnnl-dev); skipped without it,
except where CFG_REQUIRE_ONEDNN=1 (.ci/run builds it and sets that), where its absence fails.
"""

import ctypes
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cfg import build, config_checks
from cfg.cli import build_onednn_conv
from cfg.models import onednn_conv
from tests.smoke_config import smoke_config

NHWC = ('NHWC', 'HWIO', 'NHWC')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def library():
  reason = onednn_conv.unavailable_reason()
  if reason and os.environ.get('CFG_REQUIRE_ONEDNN') == '1':
    pytest.fail(reason)
  if reason:
    pytest.skip(reason)


def assert_close(actual, expected, rtol=2e-6):
  """|a − e| ≤ rtol · max|e| elementwise: float32 sums of up to a few thousand terms in another order."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def _random(shape, seed):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# On two or more cores the library splits batches of 2 and 3 into two chunks over XLA's thread pool (3 → 2 + 1,
# one primitive for each size) and sums the chunks' kernel gradients.
CASES = [
    ((2, 9, 7, 3), (3, 3, 3, 5), 'SAME'),
    ((3, 8, 8, 16), (1, 1, 16, 4), 'SAME'),
    ((2, 6, 5, 1), (3, 3, 1, 8), 'SAME'),
    ((2, 6, 5, 8), (3, 3, 8, 1), 'VALID'),
    ((1, 7, 9, 4), (2, 3, 4, 6), ((0, 2), (1, 0))),
]


@pytest.mark.parametrize('x_shape, kernel_shape, padding', CASES)
def test_convolution_and_both_gradients_equal_xlas(library, x_shape, kernel_shape, padding):
  assert_equal_to_xlas(x_shape, kernel_shape, padding)


def assert_equal_to_xlas(x_shape, kernel_shape, padding):
  x, kernel = _random(x_shape, 0), _random(kernel_shape, 1)

  def loss_and_grads(conv):
    def loss(x, kernel):
      y = conv(x, kernel, (1, 1), padding, dimension_numbers=NHWC)
      return jnp.sum(y * jnp.cos(y)), y  # a cotangent that varies over every output element
    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, kernel)
    return y, grads

  y, (dx, dk) = jax.jit(lambda x, k: loss_and_grads(onednn_conv.conv_general_dilated))(x, kernel)
  y_xla, (dx_xla, dk_xla) = jax.jit(lambda x, k: loss_and_grads(lax.conv_general_dilated))(x, kernel)
  assert_close(y, y_xla)
  assert_close(dx, dx_xla)
  assert_close(dk, dk_xla)
  lowered = jax.jit(lambda x, k: loss_and_grads(onednn_conv.conv_general_dilated)).lower(x, kernel).as_text()
  assert lowered.count('CfgOnednnConv') >= 3 and 'convolution' not in lowered  # oneDNN really ran all three


def test_vmap_folds_a_shared_kernels_lanes_into_one_call_and_keeps_per_lane_results(library):
  """vmap over images with one kernel (the guidance-weight sweeps): the lanes go into ONE oneDNN call of
  L·B rows, also under a vmap of a vmap; a kernel per lane, and the gradients per lane (the kernel gradient
  sums over its own lane's rows only), give each lane's own convolution."""
  x, kernel, kernels = _random((3, 2, 6, 6, 4), 2), _random((3, 3, 4, 5), 3), _random((3, 3, 3, 4, 5), 4)
  conv = lambda a, k: onednn_conv.conv_general_dilated(a, k, (1, 1), 'SAME', dimension_numbers=NHWC)
  reference = lambda a, k: lax.conv_general_dilated(a, k, (1, 1), 'SAME', dimension_numbers=NHWC)
  shared = jax.jit(jax.vmap(conv, in_axes=(0, None)))
  lowered = shared.lower(x, kernel).as_text()
  assert lowered.count('CfgOnednnConv') == 1 and 'tensor<6x6x6x4xf32>' in lowered, lowered
  assert_close(shared(x, kernel), jax.vmap(reference, in_axes=(0, None))(x, kernel))
  twice = jax.jit(jax.vmap(jax.vmap(conv, in_axes=(0, None)), in_axes=(0, None)))
  assert twice.lower(x[None].repeat(2, 0), kernel).as_text().count('CfgOnednnConv') == 1
  assert_close(twice(x[None].repeat(2, 0), kernel)[1], shared(x, kernel))
  assert_close(jax.jit(jax.vmap(conv))(x, kernels), jax.vmap(reference)(x, kernels))
  assert_close(jax.jit(jax.vmap(conv, in_axes=(None, 0)))(x[0], kernels),
               jax.vmap(reference, in_axes=(None, 0))(x[0], kernels))
  grads = lambda c: jax.vmap(jax.grad(lambda a, k: jnp.sum(jnp.sin(c(a, k))), argnums=(0, 1)), in_axes=(0, None))
  for ours, theirs in zip(jax.jit(grads(conv))(x, kernel), grads(reference)(x, kernel)):
    assert_close(ours, theirs)


@pytest.mark.parametrize('case', ['bfloat16', 'stride 2', 'cropping'])
def test_what_onednn_does_not_cover_is_laxs_own(case):
  """No library needed: these never reach oneDNN, and give exactly lax's result."""
  dtype = jnp.bfloat16 if case == 'bfloat16' else jnp.float32
  x, kernel = _random((2, 8, 8, 4), 4).astype(dtype), _random((3, 3, 4, 6), 5).astype(dtype)
  strides = (2, 2) if case == 'stride 2' else (1, 1)
  padding = ((-1, 1), (1, 1)) if case == 'cropping' else 'SAME'
  ours = jax.jit(lambda x, k: onednn_conv.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC))
  assert 'CfgOnednnConv' not in ours.lower(x, kernel).as_text()
  np.testing.assert_array_equal(
      np.asarray(ours(x, kernel).astype(jnp.float32)),
      np.asarray(lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC).astype(jnp.float32)))


def _models(**overrides):
  config = smoke_config()
  config.model.update(overrides)
  models = {}
  for impl in ('xla', 'onednn'):
    config.model.conv_impl = impl
    models[impl] = build.model_from_config(config)
  return models


def test_the_unet_and_its_gradients_equal_xlas(library):
  """The smoke U-Net (every convolution of it on oneDNN): the same parameter tree (checkpoints load either
  way), and ε̂ and the gradient of a loss through it to float32 rounding."""
  models = _models(dropout=0.0)
  z, labels = _random((4, 28, 28, 1), 6), jnp.arange(4) % 10
  logsnr = jnp.linspace(-5.0, 5.0, 4)
  params = {impl: model.init(jax.random.key(0), z, logsnr, labels) for impl, model in models.items()}
  assert jax.tree.structure(params['xla']) == jax.tree.structure(params['onednn'])
  for a, b in zip(jax.tree.leaves(params['xla']), jax.tree.leaves(params['onednn'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Nonzero last layers, so that every convolution's gradient is nonzero.
  params = jax.tree.map(lambda p: p + 0.05 * _random(p.shape, 7), params['xla'])

  def eps_and_grads(model):
    loss = lambda p: jnp.mean((model.apply(p, z, logsnr, labels) - z) ** 2)
    return model.apply(params, z, logsnr, labels), jax.grad(loss)(params)

  eps, grads = jax.jit(lambda: eps_and_grads(models['onednn']))()
  eps_xla, grads_xla = jax.jit(lambda: eps_and_grads(models['xla']))()
  assert_close(eps, eps_xla, rtol=1e-5)
  for (path, g), g_xla in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_xla)):
    assert float(jnp.abs(g_xla).max()) > 0, path
    assert_close(g, g_xla, rtol=1e-5)
  program = jax.jit(lambda: eps_and_grads(models['onednn'])).lower().as_text()
  assert 'convolution' not in program and program.count('CfgOnednnConvKernelGradient') >= 10


def test_conv_impl_is_checked_and_resolved(monkeypatch):
  config = smoke_config()
  config.model.conv_impl = 'mkldnn'
  with pytest.raises(ValueError, match='conv_impl'):
    config_checks.check_config(config)
  with pytest.raises(ValueError, match="use one of \\('xla', 'onednn', 'auto'\\)"):
    onednn_conv.resolve('mkldnn')
  assert onednn_conv.resolve('xla') == 'xla'
  monkeypatch.setattr(onednn_conv, '_load', lambda: (None, 'the library is not built; build it with ...'))
  assert onednn_conv.resolve('auto') == 'xla'
  with pytest.raises(ValueError, match='not built.*Or use conv_impl=auto or xla'):
    onednn_conv.resolve('onednn')


# Run in a process of its own: the library built here links oneDNN 3's libdnnl.so.3, beside this process's.
_CHECK_ANOTHER_BUILD = """import sys
from cfg.models import onednn_conv
onednn_conv.LIBRARY = sys.argv[1]
from tests.test_onednn_conv import CASES, assert_equal_to_xlas
for case in CASES:
  assert_equal_to_xlas(*case)
print('oneDNN', onednn_conv.onednn_version(), 'gives lax\\'s results')
"""


def test_builds_against_onednn_3_from_pip_and_gives_laxs_results(tmp_path):
  """`build_onednn_conv --onednn=PREFIX` against pip's oneDNN 3.2 in the venv (.ci/run installs it; the
  3.x API makes the primitive descriptors differently from Debian 12's 2.6.3): every case above, in a
  process that loads that library."""
  if not os.path.exists(os.path.join(sys.prefix, 'include', 'oneapi', 'dnnl', 'dnnl.hpp')):
    message = f'no oneDNN under {sys.prefix}: `{onednn_conv.PIP_ONEDNN}` puts it there'
    if os.environ.get('CFG_REQUIRE_ONEDNN') == '1':
      pytest.fail(message)
    pytest.skip(message)
  with pytest.raises(SystemExit, match='there is no .*dnnl.hpp.*--onednn'):
    build_onednn_conv.run([f'--onednn={tmp_path}'])
  library = onednn_conv.build(str(tmp_path / 'conv.so'), onednn=sys.prefix)
  done = subprocess.run([sys.executable, '-c', _CHECK_ANOTHER_BUILD, library], cwd=ROOT, capture_output=True,
                        text=True)
  assert done.returncode == 0, done.stderr[-4000:]
  assert re.search(r'^oneDNN 3\.\d+\.\d+ gives', done.stdout, re.M), done.stdout


def test_the_build_names_its_source(library, tmp_path):
  """A library records the sha256 of the source it was built from, which is how a stale one is refused."""
  built = ctypes.cdll.LoadLibrary(onednn_conv.build(str(tmp_path / 'conv.so')))
  built.CfgOnednnConvSourceSha256.restype = ctypes.c_char_p
  assert built.CfgOnednnConvSourceSha256().decode() == onednn_conv.source_sha256()
  assert onednn_conv.implementation('kernel_gradient', (64, 28, 28, 48), (3, 3, 48, 16), ((1, 1), (1, 1)))
  assert re.fullmatch(r'[23]\.\d+\.\d+', onednn_conv.onednn_version()), onednn_conv.onednn_version()
