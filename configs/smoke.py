"""A tiny preset for tests and quick checks: Fashion-MNIST, a ~30k-parameter U-Net, a few steps.

python launch.py --config=configs/smoke.py --workdir=/tmp/smoke
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.update(dict(
      base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,),
      head_channels=8, dropout=0.0, norm_groups=4))
  config.optim.update(dict(learning_rate=1e-3, warmup_steps=5, ema_rate=0.99))
  config.train.update(dict(
      batch_size=16, num_steps=6, log_every=2, checkpoint_every=3, keep_checkpoints=2,
      preview_every=6))
  config.sampling.update(dict(sampler='ddim', num_steps=4, num_samples=20, batch_size=10))
  config.guidance.weights = (0.0, 1.0)
  return config
