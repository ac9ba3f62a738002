"""Building blocks of the ADM U-Net (Dhariwal & Nichol 2021, openai/guided-diffusion), NHWC.

Precision: convolutions, dense layers and attention matmuls run in the module's `dtype`
(e.g. bfloat16); parameters are always float32; GroupNorm and the attention softmax run in
float32, as ADM does under fp16.

Initialisation follows PyTorch's defaults, which ADM uses: weights U(±1/sqrt(fan_in)) (variance
1/(3 fan_in)), label embeddings N(0, 1); the last layer of every residual branch is zero.
Biases start at zero (PyTorch draws them uniformly; nothing in ADM depends on that).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg.models import onednn_conv

TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
TIMESTEP_SCALE = 1000.0
GROUP_NORM_EPS = 1e-5


def time_from_logsnr(logsnr):
  """t = (2/π) arctan(e^{−λ/2}) ∈ (0, 1): u of the cosine schedule with λ_min, λ_max = ∓∞."""
  return (2.0 / math.pi) * jnp.arctan(jnp.exp(-0.5 * logsnr))


def timestep_embedding(timesteps, dim, *, max_period=10000.0):
  """[cos(t f_k), sin(t f_k)], f_k = max_period^{−k/half}, k < half = dim // 2 (ADM's order)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


def upsample_nearest(x):
  """2× nearest-neighbour upsampling of NHWC x."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_average(x):
  """2×2 average pooling with stride 2 of NHWC x."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _group_stats(x, groups):
  """Per-(image, group) mean and 1/sqrt(var + ε) of float32 NHWC x ([B, G] each), var = E[x²] − E[x]²
  as flax's nn.GroupNorm computes it: per-channel sums over H·W first, then over each group's channels."""
  batch, height, width, channels = x.shape
  count = height * width * (channels // groups)
  mean = jnp.sum(x, axis=(1, 2)).reshape(batch, groups, -1).sum(-1) / count
  mean_sq = jnp.sum(x * x, axis=(1, 2)).reshape(batch, groups, -1).sum(-1) / count
  return mean, jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + GROUP_NORM_EPS)


def _per_channel(v, channels):
  """[B, G] → [B, C]: each group's value for each of its channels."""
  return jnp.repeat(v, channels // v.shape[1], axis=1)


def _norm_affine(x, gamma, beta, scale, groups):
  """(a, b, mean, rstd) with GN(x)·(1 + scale) = a·x + b per (image, channel): a, b are [B, C]."""
  channels = x.shape[-1]
  mean, rstd = _group_stats(x, groups)
  mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
  a = gamma * (1.0 + scale) * rstd_c
  b = (beta - gamma * mean_c * rstd_c) * (1.0 + scale)
  return a, b, mean, rstd


def _spatial(v):
  return v[:, None, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def group_norm_modulated(x, gamma, beta, scale, shift, groups, silu):
  """act(GN(x; γ, β)·(1 + scale) + shift), act = SiLU or the identity, for float32 NHWC x, scale and shift
  [B, C]: ADM's norm, scale-shift and nonlinearity as one map a·x + b per (image, channel).

  Its gradient is written out (`_group_norm_modulated_bwd`) rather than left to autodiff, which on
  XLA:CPU made several passes over the activation for the statistics' chain rule; this one is written as
  one pass of per-channel sums over x and the cotangent and one elementwise pass, and keeps only x for
  the backward pass (1.04–1.07× on the default train step, experiments/throughput.md). Same arithmetic as flax's nn.GroupNorm followed by the
  scale-shift and SiLU, to float32 rounding (tests/test_unet.py).
  """
  return _group_norm_modulated_fwd(x, gamma, beta, scale, shift, groups, silu)[0]


def _sigmoid(u):
  """σ(u) = ½·tanh(u/2) + ½, the same function as jax.nn.sigmoid: XLA:CPU evaluates tanh as a rational
  polynomial, where sigmoid's 1 / (1 + exp(−u)) costs an exp and a divide (with the barrier in the
  backward pass below, 1.07× on the default train step; experiments/throughput.md, section 9)."""
  return 0.5 * jnp.tanh(0.5 * u) + 0.5


def _group_norm_modulated_fwd(x, gamma, beta, scale, shift, groups, silu):
  a, b, mean, rstd = _norm_affine(x, gamma, beta, scale, groups)
  # The barrier makes XLA compute the [B, C] coefficients once: without it the loop fusion of the
  # elementwise pass evaluates their arithmetic, and the index maps of _per_channel, for every element.
  a_map, b_map = jax.lax.optimization_barrier((a, b + shift))
  u = _spatial(a_map) * x + _spatial(b_map)
  return (u * _sigmoid(u) if silu else u), (x, gamma, beta, scale, a_map, b_map, mean, rstd)


def _group_norm_modulated_bwd(groups, silu, residuals, dy):
  """With u = a·x + b, du = dy · act'(u), A = Σ_hw du, S = Σ_hw du (x − μ) per (image, channel), and
  g = γ (1 + scale): ∂shift = A, ∂scale = γ r S + β A, ∂β = Σ_b (1 + scale) A, ∂γ = Σ_b (1 + scale) r S,
  ∂x = r g du − (r / N)(Σ_grp g A + x̂ Σ_grp g r S), x̂ = (x − μ) r, N = H·W·C/G."""
  x, gamma, beta, scale, a_map, b_map, mean, rstd = residuals
  # Without the barrier XLA merges the u and σ(u) recomputed here with the forward pass's (CSE), so the
  # forward pass stores σ(u) in a pass of its own and reads it back for SiLU, dropout and this gradient.
  x = jax.lax.optimization_barrier(x)
  batch, height, width, channels = x.shape
  count = height * width * (channels // groups)

  def du():  # recomputed where it is used, so XLA fuses it into both passes instead of storing it
    if not silu:
      return dy
    u = _spatial(a_map) * x + _spatial(b_map)
    sig = _sigmoid(u)
    return dy * (sig * (1.0 + u * (1.0 - sig)))

  mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
  d_sum = jnp.sum(du(), axis=(1, 2))
  d_centred = jnp.sum(du() * x, axis=(1, 2)) - mean_c * d_sum
  gain = gamma * (1.0 + scale)
  group_sum = lambda v: v.reshape(batch, groups, -1).sum(-1)
  coef_x = _per_channel(-(rstd ** 2 / count) * group_sum(gain * rstd_c * d_centred), channels)
  coef_0 = _per_channel(-(rstd / count) * group_sum(gain * d_sum), channels) - coef_x * mean_c
  c_du, c_x, c_0 = jax.lax.optimization_barrier((rstd_c * gain, coef_x, coef_0))  # as a_map, b_map
  dx = _spatial(c_du) * du() + _spatial(c_x) * x + _spatial(c_0)
  d_gamma = jnp.sum((1.0 + scale) * rstd_c * d_centred, axis=0)
  d_beta = jnp.sum((1.0 + scale) * d_sum, axis=0)
  d_scale = gamma * rstd_c * d_centred + beta * d_sum
  return dx, d_gamma, d_beta, d_scale, d_sum


group_norm_modulated.defvjp(_group_norm_modulated_fwd, _group_norm_modulated_bwd)


class _GroupNormParams(nn.Module):
  """γ and β of a GroupNorm, under the names flax's nn.GroupNorm gives them (checkpoints load either way)."""
  features: int

  @nn.compact
  def __call__(self):
    return (self.param('scale', nn.initializers.ones, (self.features,), jnp.float32),
            self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32))


class GroupNorm32(nn.Module):
  """GroupNorm(num_groups, ε = 1e−5) computed in float32, returned in float32; optionally followed by
  ADM's scale-shift (`scale`, `shift`: [B, C]) and SiLU, all in `group_norm_modulated`."""
  num_groups: int = 32

  @nn.compact
  def __call__(self, x, *, scale=None, shift=None, silu=False):
    batch, channels = x.shape[0], x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
          f'GroupNorm with {self.num_groups} groups got {channels} channels, which it does not '
          f'divide; choose base_channels and channel_mult so every width is a multiple of '
          f'norm_groups, or lower norm_groups.')
    gamma, beta = _GroupNormParams(channels, name='GroupNorm_0')()
    zeros = jnp.zeros((batch, channels), jnp.float32)
    scale = zeros if scale is None else scale.astype(jnp.float32)
    shift = zeros if shift is None else shift.astype(jnp.float32)
    return group_norm_modulated(x.astype(jnp.float32), gamma, beta, scale, shift, self.num_groups, silu)


CONV_IMPLS = {'xla': jax.lax.conv_general_dilated, 'onednn': onednn_conv.conv_general_dilated}


def conv(features, kernel_size, *, dtype, zero_init=False, strides=1, impl='xla', name=None):
  """A 'SAME'-padded 2-D convolution with PyTorch-default (or zero) weight init, run by XLA or (impl='onednn',
  on the CPU) oneDNN: the same parameters either way."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides), padding='SAME',
                 dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.zeros if zero_init else TORCH_DEFAULT_INIT,
                 conv_general_dilated=CONV_IMPLS[impl], name=name)


def dense(features, *, dtype, zero_init=False, name=None):
  """A dense layer with PyTorch-default (or zero) weight init."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.zeros if zero_init else TORCH_DEFAULT_INIT,
                  name=name)


def _mix32(x):
  """lowbias32 (C. Wellons' hash-prospector): a bijection of uint32 in which every output bit depends on
  every input bit."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def dropout_keep_mask(key, shape, rate):
  """A Bernoulli(1 − rate) mask of `shape`: each element's bit is a hash of its index in the whole array
  and of the key's words, so it is the same under any sharding (as jax.random's bits are), at a tenth of
  threefry's cost on the CPU (experiments/throughput.md)."""
  if math.prod(shape) >= 2 ** 32:
    raise ValueError(f'dropout on an array of {math.prod(shape):,} elements: the mask indexes elements in '
                     '32 bits; use a smaller per-call batch (train.grad_accum_steps) for this layer.')
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):  # the row-major index, from per-axis iotas (they shard cleanly)
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  bits = index
  for word in words.reshape(-1).astype(jnp.uint32):
    bits = _mix32(bits ^ word)
  return bits >= jnp.uint32(min(round(rate * 2 ** 32), 2 ** 32 - 1))


class Dropout(nn.Module):
  """x / (1 − rate) where `dropout_keep_mask` keeps it, else 0 (train only; rng name 'dropout')."""
  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic):
    if deterministic or self.rate == 0.0:
      return x
    if not 0.0 < self.rate < 1.0:
      raise ValueError(f'dropout rate {self.rate} must lie in [0, 1).')
    keep = dropout_keep_mask(self.make_rng('dropout'), x.shape, self.rate)
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


class ResBlock(nn.Module):
  """h = conv(drop(SiLU(GN(conv(SiLU(GN(x)))) (1 + scale) + shift))), out = skip(x) + h.

  (scale, shift) = Dense(SiLU(emb)) is ADM's scale-shift norm (AdaGN). `resample` = 'up' or
  'down' makes it BigGAN's resampling block: both paths are resampled after the first
  norm/SiLU (nearest ×2 or 2×2 average). The last conv starts at zero, so the block starts
  as its skip path; the skip is a 1×1 conv when the width changes. `conv_impl`: 'xla' or 'onednn' (`conv`).
  """
  out_channels: int
  dropout: float = 0.0
  resample: str | None = None
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, emb, *, train):
    resamplers = {None: lambda a: a, 'up': upsample_nearest, 'down': downsample_average}
    resample = resamplers[self.resample]
    h = GroupNorm32(self.norm_groups, name='norm_in')(x, silu=True).astype(self.dtype)
    h, x = resample(h), resample(x)
    h = conv(self.out_channels, 3, dtype=self.dtype, impl=self.conv_impl, name='conv_in')(h)
    emb_out = dense(2 * self.out_channels, dtype=self.dtype, name='emb')(nn.silu(emb))
    scale, shift = jnp.split(emb_out.astype(jnp.float32), 2, axis=-1)
    h = GroupNorm32(self.norm_groups, name='norm_out')(h, scale=scale, shift=shift, silu=True)
    h = Dropout(self.dropout)(h.astype(self.dtype), deterministic=not train)
    h = conv(self.out_channels, 3, dtype=self.dtype, zero_init=True, impl=self.conv_impl, name='conv_out')(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, dtype=self.dtype, impl=self.conv_impl, name='skip')(x)
    return x.astype(self.dtype) + h


ATTENTION_IMPLS = ('auto', 'xla', 'cudnn')


def cudnn_attention_unavailable_reason():
  """None where cuDNN's fused attention can run (an NVIDIA GPU of compute capability 8.0 or newer, as jax's
  cuDNN flash attention needs), else why not."""
  if jax.default_backend() != 'gpu':
    return f'it runs on NVIDIA GPUs only, and this process runs on {jax.default_backend()}'
  device = jax.devices()[0]
  if 'cuda' not in device.client.platform_version.lower():
    return f'it needs CUDA, and this GPU runs {device.client.platform_version}'
  major, minor = (int(part) for part in device.compute_capability.split('.')[:2])
  if (major, minor) < (8, 0):
    return f'it needs compute capability 8.0 or newer, and {device.device_kind} has {device.compute_capability}'
  return None


def attention_implementation(attention_impl, dtype, head_dim=None):
  """jax.nn.dot_product_attention's `implementation` for config.model.attention_impl.

  'xla': XLA's softmax(q kᵀ / √d) v. 'cudnn': cuDNN's fused flash attention, which needs an NVIDIA GPU
  (compute capability ≥ 8.0), bfloat16 compute and a head dimension that is a multiple of 8, at most 128
  (jax allows 256 on Hopper and newer; 128 keeps one rule for every card); an error otherwise. 'auto':
  cuDNN where all of that holds, XLA elsewhere (CPUs, float32, other head dimensions). `head_dim=None`
  checks the rest only (before the model is traced).
  """
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f'config.model.attention_impl={attention_impl!r}; use one of {ATTENTION_IMPLS}.')
  if attention_impl == 'xla':
    return 'xla'
  problems = [reason for reason in (
      cudnn_attention_unavailable_reason(),
      None if jnp.dtype(dtype) == jnp.bfloat16 else
      f'it needs compute_dtype=bfloat16, and the model computes in {jnp.dtype(dtype).name}',
      None if head_dim is None or (head_dim % 8 == 0 and head_dim <= 128) else
      f'it needs a head dimension that is a multiple of 8 and at most 128, and this block\'s is {head_dim}')
      if reason]
  if not problems:
    return 'cudnn'
  if attention_impl == 'cudnn':
    raise ValueError(f'config.model.attention_impl=cudnn: {"; ".join(problems)}. Use attention_impl=auto '
                     f'(cuDNN where it applies, XLA elsewhere) or xla.')
  return 'xla'


class AttentionBlock(nn.Module):
  """x + W_o · MHA(GN(x)), MHA = softmax(q kᵀ / sqrt(d)) v per head over all H·W positions.

  One 1×1 projection gives [q | k | v], each split into heads afterwards (ADM's
  `use_new_attention_order` / `QKVAttention`). W_o starts at zero. Heads: C / head_channels when
  head_channels > 0, otherwise num_heads. `attention_impl` (see `attention_implementation`): 'xla',
  'cudnn' (cuDNN's fused flash attention on NVIDIA GPUs, bfloat16) or 'auto'; the same parameters.
  """
  num_heads: int = -1
  head_channels: int = -1
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = 'xla'

  def heads_for(self, channels):
    """Number of heads for a feature map of `channels` channels."""
    if self.head_channels > 0:
      if channels % self.head_channels:
        raise ValueError(f'attention over {channels} channels cannot use head_channels='
                         f'{self.head_channels}: it must divide every attended width.')
      return channels // self.head_channels
    if self.num_heads <= 0:
      raise ValueError('attention needs num_heads > 0 or head_channels > 0; got neither.')
    if channels % self.num_heads:
      raise ValueError(f'attention over {channels} channels cannot use num_heads={self.num_heads}: '
                       f'it must divide every attended width.')
    return self.num_heads

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    heads = self.heads_for(channels)
    h = GroupNorm32(self.norm_groups, name='norm')(x).astype(self.dtype)
    h = h.reshape(batch, height * width, channels)
    qkv = dense(3 * channels, dtype=self.dtype, name='qkv')(h)
    q, k, v = (a.reshape(batch, height * width, heads, channels // heads)
               for a in jnp.split(qkv, 3, axis=-1))
    implementation = attention_implementation(self.attention_impl, self.dtype, channels // heads)
    attended = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    attended = attended.reshape(batch, height * width, channels)
    out = dense(channels, dtype=self.dtype, zero_init=True, name='proj_out')(attended)
    return x.astype(self.dtype) + out.reshape(batch, height, width, channels)
