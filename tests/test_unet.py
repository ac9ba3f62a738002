"""Tests for cfg.models: the ADM U-Net and its blocks."""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg.models import UNet, count_params
from cfg.models import layers
from cfg.models.layers import (AttentionBlock, Dropout, GroupNorm32, ResBlock, _sigmoid, attention_implementation,
                               cudnn_attention_unavailable_reason, dropout_keep_mask, group_norm_modulated,
                               time_from_logsnr, timestep_embedding)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_CLASSES = 10


def adm_param_count(*, in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
                    attention_resolutions, num_classes, image_size):
  """Parameters of guided-diffusion's UNetModel (scale-shift norm, resblock_updown), counted by
  walking its constructor with PyTorch's layer sizes (conv/linear with bias, GroupNorm affine)."""
  conv = lambda cin, cout, k: cin * cout * k * k + cout
  norm = lambda c: 2 * c
  emb = 4 * model_channels

  def res(ch, out):
    count = norm(ch) + conv(ch, out, 3) + conv(emb, 2 * out, 1) + norm(out) + conv(out, out, 3)
    return count + (conv(ch, out, 1) if out != ch else 0)

  attn = lambda ch: norm(ch) + conv(ch, 3 * ch, 1) + conv(ch, ch, 1)
  total = conv(model_channels, emb, 1) + conv(emb, emb, 1) + num_classes * emb
  ch = input_ch = channel_mult[0] * model_channels
  total += conv(in_channels, ch, 3)
  chans, ds = [ch], 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      total += res(ch, mult * model_channels)
      ch = mult * model_channels
      total += attn(ch) if image_size // ds in attention_resolutions else 0
      chans.append(ch)
    if level != len(channel_mult) - 1:
      total += res(ch, ch)
      chans.append(ch)
      ds *= 2
  total += 2 * res(ch, ch) + attn(ch)
  for level, mult in list(enumerate(channel_mult))[::-1]:
    for i in range(num_res_blocks + 1):
      total += res(ch + chans.pop(), model_channels * mult)
      ch = model_channels * mult
      total += attn(ch) if image_size // ds in attention_resolutions else 0
      if level and i == num_res_blocks:
        total += res(ch, ch)
        ds //= 2
  return total + norm(ch) + conv(input_ch, out_channels, 3)


# ADM Table 11 settings; published sizes include ADM's learned-variance output (6 channels) and
# 1000 class rows. Ours predicts ε only (3 channels) and has a 1001st row for the null label:
# 64×64: −3·(192·9 + 1) + 768 = −4,419 parameters; 128×128: −3·(256·9 + 1) + 1024 = −5,891.
IMAGENET_SETTINGS = {
    'imagenet64': dict(
        unet=dict(base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                  attn_resolutions=(32, 16, 8), head_channels=64, dropout=0.1),
        image_size=64, published=296e6),
    'imagenet128': dict(
        unet=dict(base_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                  attn_resolutions=(32, 16, 8), num_heads=4),
        image_size=128, published=422e6),
}


@pytest.mark.parametrize('name', sorted(IMAGENET_SETTINGS))
def test_imagenet_param_counts_match_adm(name):
  setting = IMAGENET_SETTINGS[name]
  unet, size = setting['unet'], setting['image_size']
  ours = count_params(UNet(num_classes=1000, **unet), (size, size, 3))
  adm_layout = functools.partial(
      adm_param_count, in_channels=3, model_channels=unet['base_channels'],
      channel_mult=unet['channel_mult'], num_res_blocks=unet['num_res_blocks'],
      attention_resolutions=unet['attn_resolutions'], image_size=size)
  adm_published_layout = adm_layout(out_channels=6, num_classes=1000)
  assert abs(adm_published_layout / setting['published'] - 1) < 0.005
  assert ours == adm_layout(out_channels=3, num_classes=1001)
  assert abs(ours / setting['published'] - 1) < 0.05


def test_time_from_logsnr_is_the_untruncated_cosine_coordinate():
  logsnr = jnp.array([-40.0, -3.0, 0.0, 3.0, 40.0])
  t = np.asarray(time_from_logsnr(logsnr), np.float64)
  # λ = −2 log tan(π t / 2)  ⇔  t = (2/π) arctan(e^{−λ/2}).
  np.testing.assert_allclose(-2 * np.log(np.tan(np.pi * t[1:4] / 2)), [-3.0, 0.0, 3.0], atol=1e-5)
  np.testing.assert_allclose(t[[0, 2, 4]], [1.0, 0.5, 0.0], atol=1e-7)
  np.testing.assert_allclose(t[1] + t[3], 1.0, atol=1e-6)


def test_timestep_embedding_is_adm_sinusoid():
  t = np.array([0.0, 3.5, 999.0])
  dim = 6
  freqs = 10000.0 ** (-np.arange(3) / 3)
  expected = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), dim), expected, atol=1e-4)


def init_key(seed=0):
  # Counter-based RBG keys compile far faster on CPU than threefry for Flax's many param draws.
  return jax.random.key(seed, impl='unsafe_rbg')


def perturbed(params, seed, scale=0.05):
  """params + N(0, scale²) on every leaf (host draws), so zero-initialised layers contribute."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: a + scale * rng.standard_normal(a.shape, np.float32), params)


def numpy_group_norm(x, gamma, beta, groups, eps=1e-5):
  b, h, w, c = x.shape
  g = x.reshape(b, h * w, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def silu(x):
  return x / (1 + np.exp(-x))


def numpy_conv3x3(x, kernel, bias):
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(padded[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(3) for j in range(3))
  return out + bias


def test_attention_block_matches_adm_qkv_attention():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 16), np.float32))
  block = AttentionBlock(head_channels=4, norm_groups=4)
  params = perturbed(jax.jit(block.init)(init_key(), x), seed=2, scale=0.2)
  out = np.asarray(jax.jit(block.apply)(params, x), np.float64)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['params'])
  xn = np.asarray(x, np.float64)
  h = numpy_group_norm(xn, p['norm']['GroupNorm_0']['scale'], p['norm']['GroupNorm_0']['bias'], 4)
  qkv = h.reshape(2, 16, 16) @ p['qkv']['kernel'] + p['qkv']['bias']       # [B, T, 3C]
  q, k, v = np.split(qkv.transpose(0, 2, 1), 3, axis=1)                    # ADM's chunk(3, dim=1)
  heads = lambda a: a.reshape(2 * 4, 4, 16)                                 # view(bs·H, ch, T)
  scale = 1 / math.sqrt(math.sqrt(4))
  weight = np.einsum('bct,bcs->bts', heads(q) * scale, heads(k) * scale)
  weight = np.exp(weight - weight.max(-1, keepdims=True))
  weight /= weight.sum(-1, keepdims=True)
  attended = np.einsum('bts,bcs->bct', weight, heads(v)).reshape(2, 16, 16).transpose(0, 2, 1)
  expected = xn + (attended @ p['proj_out']['kernel'] + p['proj_out']['bias']).reshape(xn.shape)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_attention_impl_auto_takes_cudnn_only_where_it_applies_and_cudnn_elsewhere_is_an_error(monkeypatch):
  bf16, f32 = jnp.bfloat16, jnp.float32
  if jax.default_backend() == 'cpu':
    assert attention_implementation('auto', bf16, 64) == 'xla'
    with pytest.raises(ValueError, match='NVIDIA GPUs only.*attention_impl=auto'):
      attention_implementation('cudnn', bf16, 64)
  # As on an NVIDIA GPU of compute capability 8.0 or newer: the dtype and the head dimension decide.
  monkeypatch.setattr(layers, 'cudnn_attention_unavailable_reason', lambda: None)
  assert attention_implementation('auto', bf16, 64) == 'cudnn'
  assert attention_implementation('auto', bf16, 128) == 'cudnn'
  assert [attention_implementation('auto', dtype, head_dim) for dtype, head_dim in
          ((f32, 64), (bf16, 12), (bf16, 136))] == ['xla'] * 3
  assert attention_implementation('xla', bf16, 64) == 'xla'
  with pytest.raises(ValueError, match='compute_dtype=bfloat16, and the model computes in float32'):
    attention_implementation('cudnn', f32, 64)
  with pytest.raises(ValueError, match='multiple of 8 and at most 128.*is 12'):
    attention_implementation('cudnn', bf16, 12)
  with pytest.raises(ValueError, match="attention_impl='flash'; use one of"):
    attention_implementation('flash', bf16, 64)


def test_attention_impl_cudnn_on_this_machine_fails_when_the_model_is_built():
  from cfg import build
  from configs import fashion_mnist
  config = fashion_mnist.get_config()
  config.model.attention_impl = 'cudnn'
  # The config computes in float32: on a CPU the machine is the first thing wrong, on an NVIDIA GPU the dtype.
  first_problem = ('it needs compute_dtype=bfloat16' if cudnn_attention_unavailable_reason() is None else
                   'it runs on NVIDIA GPUs only')
  with pytest.raises(ValueError, match=f'config.model.attention_impl=cudnn: {first_problem}'):
    build.model_from_config(config)
  config.model.attention_impl = 'xla'
  assert build.model_from_config(config).attention_impl == 'xla'


@pytest.mark.skipif(cudnn_attention_unavailable_reason() is not None,
                    reason='cuDNN attention needs an NVIDIA GPU (experiments/gpu_check.sh runs this there)')
def test_cudnn_attention_matches_xla_forward_and_gradients():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 128), np.float32))
  blocks = {impl: AttentionBlock(head_channels=64, norm_groups=32, dtype=jnp.bfloat16, attention_impl=impl)
            for impl in ('xla', 'cudnn')}
  params = perturbed(jax.jit(blocks['xla'].init)(init_key(), x), seed=2, scale=0.2)
  loss = lambda block: jax.jit(jax.value_and_grad(
      lambda p, x: jnp.sum(block.apply(p, x).astype(jnp.float32) ** 2), argnums=(0, 1)))
  (value_xla, grads_xla), (value_cudnn, grads_cudnn) = (loss(blocks[impl])(params, x) for impl in ('xla', 'cudnn'))
  assert '__cudnn$fmha' in jax.jit(blocks['cudnn'].apply).lower(params, x).as_text()  # cuDNN's attention call
  # bfloat16 carries 8 bits of mantissa: both are bf16 computations of the same sums, compared as such.
  assert abs(float(value_cudnn - value_xla)) <= 1e-2 * abs(float(value_xla))
  for ours, theirs in zip(jax.tree.leaves(grads_cudnn), jax.tree.leaves(grads_xla)):
    relative = float(jnp.linalg.norm((ours - theirs).astype(jnp.float32)) / jnp.linalg.norm(theirs.astype(jnp.float32)))
    assert relative < 2e-2, relative


@pytest.mark.parametrize('out_channels', [8, 12])
def test_res_block_matches_scale_shift_reference(out_channels):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 8), np.float32))
  emb = jnp.asarray(rng.standard_normal((2, 5), np.float32))
  block = ResBlock(out_channels, norm_groups=4)
  params = jax.jit(functools.partial(block.init, train=False))(init_key(), x, emb)
  params = perturbed(params, seed=3, scale=0.2)
  out = np.asarray(jax.jit(functools.partial(block.apply, train=False))(params, x, emb), np.float64)

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params['params'])
  xn, en = np.asarray(x, np.float64), np.asarray(emb, np.float64)
  norm = lambda a, name: numpy_group_norm(a, p[name]['GroupNorm_0']['scale'],
                                          p[name]['GroupNorm_0']['bias'], 4)
  h = numpy_conv3x3(silu(norm(xn, 'norm_in')), p['conv_in']['kernel'], p['conv_in']['bias'])
  scale, shift = np.split(silu(en) @ p['emb']['kernel'] + p['emb']['bias'], 2, axis=-1)
  h = silu(norm(h, 'norm_out') * (1 + scale[:, None, None]) + shift[:, None, None])
  h = numpy_conv3x3(h, p['conv_out']['kernel'], p['conv_out']['bias'])
  skip = xn if out_channels == 8 else xn @ p['skip']['kernel'][0, 0] + p['skip']['bias']
  np.testing.assert_allclose(out, skip + h, atol=1e-4)


def flax_group_norm_modulated(x, gamma, beta, scale, shift, groups, silu):
  """The plain composition the fused norm replaced: flax's nn.GroupNorm, scale-shift, SiLU, by autodiff."""
  import flax.linen as nn
  y = nn.GroupNorm(num_groups=groups, epsilon=1e-5).apply({'params': {'scale': gamma, 'bias': beta}}, x)
  y = y * (1.0 + scale[:, None, None]) + shift[:, None, None]
  return jax.nn.silu(y) if silu else y


@pytest.mark.parametrize('silu', [True, False])
@pytest.mark.parametrize('shape, groups', [((3, 5, 4, 12), 3), ((2, 7, 7, 8), 8), ((2, 3, 3, 4), 1)])
def test_group_norm_modulated_matches_flax_group_norm_forward_and_gradients(shape, groups, silu):
  keys = jax.random.split(jax.random.key(0), 6)
  batch, channels = shape[0], shape[-1]
  x = 2.0 * jax.random.normal(keys[0], shape) + 0.5   # off-centre, as activations are
  gamma = 1.0 + 0.3 * jax.random.normal(keys[1], (channels,))
  beta = 0.3 * jax.random.normal(keys[2], (channels,))
  scale = 0.3 * jax.random.normal(keys[3], (batch, channels))
  shift = 0.3 * jax.random.normal(keys[4], (batch, channels))
  cotangent = jax.random.normal(keys[5], shape)
  args = (x, gamma, beta, scale, shift)
  outputs, grads = [], []
  for fn in (group_norm_modulated, flax_group_norm_modulated):
    loss = lambda *a, fn=fn: jnp.vdot(fn(*a, groups, silu), cotangent)
    outputs.append(jax.jit(lambda *a, fn=fn: fn(*a, groups, silu))(*args))
    grads.append(jax.jit(jax.grad(loss, argnums=range(5)))(*args))
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
  for name, new, old in zip(('x', 'gamma', 'beta', 'scale', 'shift'), *grads):
    scale_of = float(np.max(np.abs(old)))
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5 * scale_of, err_msg=name)


def test_tanh_sigmoid_and_its_silu_match_float64_to_float32_rounding():
  u = np.concatenate([np.linspace(-40.0, 40.0, 200_001), [-88.0, 88.0, 0.0, 1e-8, -1e-8]]).astype(np.float32)
  exact = 1.0 / (1.0 + np.exp(-u.astype(np.float64)))
  ours = np.asarray(jax.jit(_sigmoid)(u), np.float64)
  assert np.max(np.abs(ours - exact)) <= 2e-7   # 1.4e-7 measured (jax.nn.sigmoid: 8.9e-8)
  assert np.all((ours >= 0.0) & (ours <= 1.0))
  silu = np.asarray(jax.jit(lambda u: u * _sigmoid(u))(u), np.float64)
  assert np.max(np.abs(silu - u * exact)) <= 3e-6   # 2.0e-6 measured, at u ≈ 14 (jax.nn.silu: 1.3e-6)


def test_group_norm_keeps_flax_parameter_names_and_defaults():
  x = jnp.ones((2, 3, 3, 8))
  params = GroupNorm32(4).init(init_key(), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == {'params': {'GroupNorm_0': {
      'scale': ((8,), jnp.float32), 'bias': ((8,), jnp.float32)}}}
  assert np.all(np.asarray(params['params']['GroupNorm_0']['scale']) == 1.0)
  assert np.all(np.asarray(params['params']['GroupNorm_0']['bias']) == 0.0)


def tiny_unet(**overrides):
  """Two levels, attention at the second level and in the middle; dropout only when train=True."""
  kwargs = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,),
                num_classes=NUM_CLASSES, num_heads=2, dropout=0.3, norm_groups=8)
  return UNet(**{**kwargs, **overrides})


def tiny_inputs(shape):
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal(shape, np.float32))
  logsnr = jnp.asarray(rng.uniform(-20.0, 20.0, shape[:1]), jnp.float32)
  labels = jnp.asarray(np.r_[NUM_CLASSES, np.arange(shape[0] - 1)], jnp.int32)   # ∅ first
  return z, logsnr, labels


@functools.cache
def tiny_setup(shape):
  model = tiny_unet(attn_resolutions=(shape[1] // 2,))
  inputs = tiny_inputs(shape)
  params = jax.jit(model.init)(init_key(1), *inputs)
  return model, params, inputs


@functools.cache
def jitted_apply(model):
  return jax.jit(model.apply, static_argnames='train')


@pytest.mark.parametrize('shape', [(3, 28, 28, 1), (2, 32, 32, 3)])
def test_initial_output_is_exactly_zero(shape):
  model, params, inputs = tiny_setup(shape)
  eps = jitted_apply(model)(params, *inputs)
  assert eps.shape == shape and eps.dtype == jnp.float32
  assert np.all(np.asarray(eps) == 0.0)


@pytest.mark.parametrize('shape', [(3, 28, 28, 1), (2, 32, 32, 3)])
def test_forward_shape_finite_and_class_dependent(shape):
  model, params, (z, logsnr, labels) = tiny_setup(shape)
  params = perturbed(params, seed=2)
  apply = jitted_apply(model)
  eps = apply(params, z, logsnr, labels)
  assert eps.shape == shape and eps.dtype == jnp.float32
  assert np.all(np.isfinite(eps)) and 0.01 < float(jnp.std(eps)) < 100.0
  null = jnp.full_like(labels, NUM_CLASSES)
  eps_null = apply(params, z, logsnr, null)
  assert np.all(np.isfinite(eps_null))
  assert float(jnp.max(jnp.abs(eps_null - apply(params, z, logsnr, jnp.zeros_like(labels))))) > 1e-3
  assert params['params']['class_embed']['embedding'].shape[0] == NUM_CLASSES + 1


def test_dropout_active_only_in_training():
  shape = (3, 28, 28, 1)
  model, params, inputs = tiny_setup(shape)
  params = perturbed(params, seed=2)
  apply = jitted_apply(model)
  train = lambda seed: apply(params, *inputs, train=True, rngs={'dropout': init_key(seed)})
  assert float(jnp.max(jnp.abs(train(0) - train(1)))) > 1e-3
  np.testing.assert_array_equal(train(0), train(0))
  eval_a, eval_b = apply(params, *inputs), apply(params, *inputs, rngs={'dropout': init_key(5)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert float(jnp.max(jnp.abs(eval_a - train(0)))) > 1e-3


def test_dropout_mask_keeps_one_minus_rate_of_the_elements_independently():
  shape, rate = (64, 28, 28, 32), 0.1
  keep = np.asarray(jax.jit(dropout_keep_mask, static_argnums=(1, 2))(jax.random.key(0), shape, rate))
  other = np.asarray(dropout_keep_mask(jax.random.key(1), shape, rate)).astype(np.float64)
  n = keep.size
  assert abs(keep.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
  centred = keep.astype(np.float64) - keep.mean()
  for axis in range(4):  # neighbours along every axis, and another key's mask, are uncorrelated
    a, b = np.swapaxes(centred, 0, axis)[:-1], np.swapaxes(centred, 0, axis)[1:]
    assert abs(np.mean(a * b)) / centred.var() < 5 / math.sqrt(a.size), axis
  assert abs(np.mean(centred * (other - other.mean()))) / centred.var() < 5 / math.sqrt(n)
  per_example = keep.reshape(64, -1).mean(axis=1)  # every example gets its own draw, none a copy
  assert len({row.tobytes() for row in keep.reshape(64, -1)}) == 64 and per_example.std() > 0


def test_dropout_scales_what_it_keeps_and_is_the_identity_outside_training():
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 16))
  layer = Dropout(0.25)
  dropped = layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(7)})
  kept = np.asarray(dropped) != 0
  np.testing.assert_allclose(np.asarray(dropped)[kept], np.asarray(x / 0.75)[kept], rtol=1e-6)
  assert abs(kept.mean() - 0.75) < 5 * math.sqrt(0.25 * 0.75 / kept.size)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  with pytest.raises(ValueError, match='32 bits'):
    dropout_keep_mask(jax.random.key(0), (2 ** 16, 2 ** 16), 0.1)


def test_dropout_mask_is_the_same_on_eight_devices():
  """Each element's bit depends on its index in the global array only, not on where its shard lives."""
  script = (
      'import jax, numpy as np\n'
      'from jax.sharding import NamedSharding, PartitionSpec as P\n'
      'from cfg.models.layers import dropout_keep_mask\n'
      'mesh = jax.make_mesh((8,), ("data",))\n'
      'f = lambda key: dropout_keep_mask(key, (16, 14, 14, 8), 0.3)\n'
      'one = np.asarray(jax.jit(f)(jax.random.key(5)))\n'
      'eight = jax.jit(f, out_shardings=NamedSharding(mesh, P("data")))(jax.random.key(5))\n'
      'assert len(eight.sharding.device_set) == 8\n'
      'np.testing.assert_array_equal(np.asarray(eight), one)\n'
      'print("same", one.mean())\n')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  done = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0 and 'same' in done.stdout, done.stderr


def test_bfloat16_compute_close_to_float32():
  shape = (2, 32, 32, 3)
  model, params, inputs = tiny_setup(shape)
  params = perturbed(params, seed=2)
  eps32 = jitted_apply(model)(params, *inputs)
  model16 = tiny_unet(attn_resolutions=(16,), dtype=jnp.bfloat16)
  eps16 = jax.jit(model16.apply)(params, *inputs)
  assert eps16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
      jax.eval_shape(model16.init, jax.random.key(0), *inputs)))
  relative_error = float(jnp.linalg.norm(eps16 - eps32) / jnp.linalg.norm(eps32))
  assert 1e-5 < relative_error < 0.05, relative_error   # bf16 really used, and still accurate


@pytest.mark.parametrize('bad, message', [
    (dict(z=jnp.zeros((2, 28, 28))), 'NHWC'),
    (dict(z=jnp.zeros((2, 27, 27, 1))), 'divisible'),
    (dict(labels=jnp.zeros((2,), jnp.float32)), 'labels'),
    (dict(logsnr=jnp.zeros((3,))), 'logsnr'),
    (dict(z=jnp.zeros((2, 32, 32, 1))), 'attn_resolutions'),
])
def test_bad_inputs_raise_clear_errors(bad, message):
  inputs = dict(z=jnp.zeros((2, 28, 28, 1)), logsnr=jnp.zeros((2,)),
                labels=jnp.zeros((2,), jnp.int32))
  inputs.update(bad)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(tiny_unet().init, init_key(), inputs['z'], inputs['logsnr'], inputs['labels'])


@pytest.mark.parametrize('resblock_updown', [True, False])
def test_output_channels_and_plain_resampling_shapes(resblock_updown):
  model = tiny_unet(out_channels=6, resblock_updown=resblock_updown)
  eps = jax.eval_shape(lambda: model.init_with_output(init_key(), *tiny_inputs((2, 28, 28, 1)))[0])
  assert eps.shape == (2, 28, 28, 6) and eps.dtype == jnp.float32


def test_missing_heads_raise():
  with pytest.raises(ValueError, match='num_heads'):
    count_params(tiny_unet(num_heads=-1), (28, 28, 1))
