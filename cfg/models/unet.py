"""The ADM U-Net (Dhariwal & Nichol 2021, openai/guided-diffusion `UNetModel`) as ε_θ(z_λ, λ, c).

Layout as ADM with `use_scale_shift_norm`, `resblock_updown` and `use_new_attention_order`:
input conv; per level `num_res_blocks` residual blocks (+ attention where the feature map's
height is in `attn_resolutions`) and, except at the last level, a downsampling block; middle
res–attention–res; decoder with `num_res_blocks + 1` blocks per level, each taking the
concatenated skip, and an upsampling block; output GroupNorm–SiLU–conv (zero-initialised).

How λ enters the network is not stated in the CFG paper. Here λ is mapped to
t = (2/π) arctan(e^{−λ/2}) ∈ (0, 1), the noise-level coordinate u of the cosine schedule with
the untruncated range (t = 0.5 at λ = 0, → 1 as λ → −∞), scaled by 1000 to ADM's timestep
range, then embedded as ADM embeds integer timesteps (sinusoids of width base_channels →
Dense 4C → SiLU → Dense 4C). The map does not depend on the training range [λ_min, λ_max], so a
model can be sampled on any λ grid.

Classes: nn.Embed(num_classes + 1, 4C) added to the λ embedding, as ADM adds its label
embedding; row `num_classes` is the null label ∅ of classifier-free guidance (its embedding is
not stated in the paper; here it is an ordinary learned row). Labels outside [0, num_classes]
give NaN (jnp.take's fill), not an error, because values cannot be checked under jit.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cfg.models.layers import (
    TIMESTEP_SCALE, AttentionBlock, GroupNorm32, ResBlock, conv, dense, time_from_logsnr,
    timestep_embedding, upsample_nearest)


class UNet(nn.Module):
  """ε̂ = UNet(z, λ, c): the ADM U-Net with λ and class conditioning through AdaGN.

  Attributes:
    base_channels: C, the width of the first level; level i has C · channel_mult[i].
    channel_mult: width multipliers per level; len(channel_mult) − 1 downsamplings.
    num_res_blocks: residual blocks per level in the encoder (decoder: one more).
    attn_resolutions: feature-map heights (e.g. 32, 16, 8 for 64×64 input) with self-attention.
    num_classes: real classes; label `num_classes` is the null label ∅.
    num_heads: attention heads (used when head_channels ≤ 0).
    head_channels: channels per attention head; takes precedence over num_heads (as in ADM).
    dropout: dropout rate inside residual blocks (active when train=True, rng name 'dropout').
    out_channels: channels of ε̂; None means the input's channels.
    resblock_updown: BigGAN residual resampling blocks (ADM); False uses strided conv /
      nearest-upsample + conv.
    norm_groups: GroupNorm groups (ADM: 32); smaller for toy widths.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, ε̂ is float32.
    remat: recompute each residual and attention block's activations in the backward pass (nn.remat),
      trading compute for the memory of the saved activations; the same parameters and gradients.
    conv_impl: 'xla', or 'onednn' for oneDNN's convolutions on the CPU (cfg/models/onednn_conv.py); the same
      parameters either way.
    attention_impl: 'xla', 'cudnn' (cuDNN's fused attention on NVIDIA GPUs) or 'auto', resolved per attention
      block by `layers.attention_implementation`; the same parameters either way.
  """
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  num_classes: int
  num_heads: int = -1
  head_channels: int = -1
  dropout: float = 0.0
  out_channels: int | None = None
  resblock_updown: bool = True
  norm_groups: int = 32
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  conv_impl: str = 'xla'
  attention_impl: str = 'xla'

  def check_inputs(self, z, logsnr, labels):
    """Raises ValueError for inputs the network cannot take."""
    if z.ndim != 4:
      raise ValueError(f'z must be NHWC [batch, height, width, channels]; got shape {z.shape}.')
    batch, height, width, _ = z.shape
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(f'image size {height}×{width} must be divisible by {factor} for '
                       f'{len(self.channel_mult)} levels; pad the images or use fewer levels.')
    if logsnr.shape != (batch,):
      raise ValueError(f'logsnr must have shape [batch] = ({batch},) or be a scalar; '
                       f'got {logsnr.shape}.')
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f'labels must be integers of shape ({batch},) in [0, {self.num_classes}]; '
                       f'got {labels.dtype} {labels.shape}.')
    heights = [height // 2**level for level in range(len(self.channel_mult))]
    if any(resolution not in heights for resolution in self.attn_resolutions):
      raise ValueError(f'attn_resolutions {tuple(self.attn_resolutions)} must be feature-map '
                       f'heights of this network, {heights} for {height}×{width} input '
                       f'(resolutions as in ADM\'s flags, e.g. 32, 16, 8 at 64×64, not '
                       f'downsampling factors).')
    if self.head_channels <= 0 and self.num_heads <= 0:
      raise ValueError('set num_heads > 0 or head_channels > 0: the middle block always has '
                       'attention.')

  def embed(self, logsnr, labels):
    """emb = MLP(sinusoid(1000 t(λ))) + E[c], in float32 (ADM keeps its embedding MLP in fp32)."""
    width = 4 * self.base_channels
    emb = timestep_embedding(TIMESTEP_SCALE * time_from_logsnr(logsnr), self.base_channels)
    emb = dense(width, dtype=jnp.float32, name='time_dense_0')(emb)
    emb = dense(width, dtype=jnp.float32, name='time_dense_1')(nn.silu(emb))
    class_embedding = nn.Embed(self.num_classes + 1, width,
                               embedding_init=nn.initializers.normal(1.0), dtype=jnp.float32,
                               param_dtype=jnp.float32, name='class_embed')
    return emb + class_embedding(labels)

  def res_block(self, out_channels, name, resample=None):
    kwargs = dict(dropout=self.dropout, resample=resample, norm_groups=self.norm_groups, dtype=self.dtype,
                  conv_impl=self.conv_impl, name=name)
    if not self.remat:
      return ResBlock(out_channels, **kwargs)
    block = nn.remat(_PositionalTrainResBlock, static_argnums=(3,))(out_channels, **kwargs)
    return lambda h, emb, *, train: block(h, emb, train)

  def attention(self, name):
    return (nn.remat(AttentionBlock) if self.remat else AttentionBlock)(
        num_heads=self.num_heads, head_channels=self.head_channels, norm_groups=self.norm_groups,
        dtype=self.dtype, attention_impl=self.attention_impl, name=name)

  def resample(self, h, emb, direction, name, *, train):
    """BigGAN residual resampling block, or ADM's plain conv resampling without resblock_updown."""
    channels = h.shape[-1]
    if self.resblock_updown:
      return self.res_block(channels, name, resample=direction)(h, emb, train=train)
    if direction == 'down':
      return conv(channels, 3, strides=2, dtype=self.dtype, impl=self.conv_impl, name=name)(h)
    return conv(channels, 3, dtype=self.dtype, impl=self.conv_impl, name=name)(upsample_nearest(h))

  @nn.compact
  def __call__(self, z, logsnr, labels, *, train=False):
    """ε̂ [B, H, W, out_channels] float32 from z [B, H, W, C], λ [B] (or scalar), labels [B] int."""
    logsnr = jnp.asarray(logsnr, jnp.float32)
    if logsnr.ndim == 0:
      logsnr = jnp.broadcast_to(logsnr, z.shape[:1])
    labels = jnp.asarray(labels)
    self.check_inputs(z, logsnr, labels)
    emb = self.embed(logsnr, labels)

    h = conv(self.base_channels * self.channel_mult[0], 3, dtype=self.dtype, impl=self.conv_impl,
             name='conv_in')(z.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for block in range(self.num_res_blocks):
        h = self.res_block(self.base_channels * mult,
                           f'down_{level}_res_{block}')(h, emb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = self.attention(f'down_{level}_attn_{block}')(h)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = self.resample(h, emb, 'down', f'down_{level}_downsample', train=train)
        skips.append(h)

    h = self.res_block(h.shape[-1], 'middle_res_0')(h, emb, train=train)
    h = self.attention('middle_attn')(h)
    h = self.res_block(h.shape[-1], 'middle_res_1')(h, emb, train=train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for block in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = self.res_block(self.base_channels * mult,
                           f'up_{level}_res_{block}')(h, emb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = self.attention(f'up_{level}_attn_{block}')(h)
      if level != 0:
        h = self.resample(h, emb, 'up', f'up_{level}_upsample', train=train)

    # ADM runs the output head in float32 even under fp16.
    h = GroupNorm32(self.norm_groups, name='norm_out')(h, silu=True)
    out_channels = self.out_channels or z.shape[-1]
    eps = conv(out_channels, 3, dtype=jnp.float32, zero_init=True, impl=self.conv_impl, name='conv_out')(h)
    return eps.astype(jnp.float32)


class _PositionalTrainResBlock(ResBlock):
  """ResBlock taking `train` positionally: nn.remat traces keyword arguments, but keeps a static
  positional one a Python bool."""

  def __call__(self, x, emb, train):  # pylint: disable=arguments-differ
    return super().__call__(x, emb, train=train)


def count_params(model, image_shape):
  """Number of parameters of `model` for (H, W, C) images, from shapes alone (no memory)."""
  height, width, channels = image_shape
  z = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(lambda *args: model.init(jax.random.key(0), *args), z, logsnr, labels)
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))
