"""CIFAR-10 32×32, a DDPM-sized ADM U-Net (35M parameters).

python launch.py --config=configs/cifar10.py --workdir=runs/cifar10
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.data.update(dict(name='cifar10', image_size=32, num_classes=10, random_flip=True))
  config.model.update(dict(
      base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
      num_heads=-1, head_channels=64, dropout=0.1, resblock_updown=True))
  config.optim.update(dict(learning_rate=2e-4, warmup_steps=5000, ema_rate=0.9999))
  config.train.update(dict(batch_size=128, num_steps=800_000, checkpoint_every=10_000))
  config.sampling.update(dict(sampler='ancestral', num_steps=256, num_samples=50_000, batch_size=1000))
  config.guidance.weights = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0)
  return default.apply_arg(config, arg)
