"""Config sections → the objects they describe: the U-Net, the optimizer and its schedule."""

import jax.numpy as jnp
import optax

from cfg.models import onednn_conv
from cfg.models.layers import attention_implementation
from cfg.models.unet import UNet

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_from_config(config):
  """The ADM U-Net of `config.model`, with num_classes + 1 label rows (the last is ∅); conv_impl 'auto' is
  resolved here, for the devices of this process, and attention_impl 'auto' per attention block."""
  m = config.model
  return UNet(
      base_channels=m.base_channels, channel_mult=tuple(m.channel_mult),
      num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
      num_heads=m.num_heads, head_channels=m.head_channels, dropout=m.dropout,
      num_classes=config.data.num_classes, resblock_updown=m.resblock_updown,
      norm_groups=m.norm_groups, dtype=_DTYPES[m.compute_dtype], remat=m.remat,
      conv_impl=onednn_conv.resolve(m.get('conv_impl', 'auto')), attention_impl=attention_impl(m))


def attention_impl(model_config):
  """config.model.attention_impl, checked where it can be before tracing: an unknown name, or 'cudnn' on a
  machine or compute dtype that cuDNN's attention cannot serve, is an error here (the head dimension is
  checked per block, when the model is traced)."""
  impl = model_config.get('attention_impl', 'auto')
  if impl != 'auto':
    attention_implementation(impl, _DTYPES[model_config.compute_dtype])
  return impl


def learning_rate_schedule(optim_config):
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then constant (ADM uses a constant rate)."""
  o = optim_config
  return optax.join_schedules(
      [optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1)),
       optax.constant_schedule(o.learning_rate)], [max(o.warmup_steps, 1)])


def optimizer_from_config(optim_config):
  """Global-norm clipping, then Adam or AdamW on the warmup schedule."""
  o = optim_config
  schedule = learning_rate_schedule(o)
  if o.optimizer == 'adam':
    base = optax.adam(schedule, b1=o.b1, b2=o.b2)
  else:
    base = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  clip = optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm else optax.identity()
  return optax.chain(clip, base)
