"""Paper Table 1 setting: ImageNet 64×64, ADM 64×64 U-Net (paper.md §5), p_uncond ∈ {0.1, 0.2, 0.5}.

python launch.py --config=configs/imagenet64.py --workdir=runs/in64
python launch.py --config=configs/imagenet64.py:h100x8 --workdir=runs/in64     # a hardware preset (PRESETS)
python launch.py --config=configs/imagenet64.py:p_uncond=0.2 --workdir=runs/in64_p02   # a field (default.apply_arg)
"""

from configs import default


# Hardware presets: the paper's global batch on fewer devices, by gradient accumulation, and evaluation
# in programs of fewer weights. Each fits the device memory by experiments/memory.py (experiments/memory.md).
PRESETS = {
    'h100x8': dict(devices=8, memory_gb=80, overrides={
        'train.grad_accum_steps': 8, 'eval.weights_per_program': 7, 'sampling.batch_size': 384}),
    'tpu_v5p_64': dict(devices=32, memory_gb=95, overrides={  # v5p-64: 32 chips of 95 GB
        'train.grad_accum_steps': 2, 'eval.weights_per_program': 7, 'sampling.batch_size': 1536}),
}


def get_config(arg=None):
  config = default.get_config()
  config.data.update(dict(name='imagenet64', image_size=64, num_classes=1000, random_flip=True))
  config.model.update(dict(
      base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
      num_heads=-1, head_channels=64, dropout=0.1, resblock_updown=True))
  config.diffusion.update(dict(logsnr_min=-20.0, logsnr_max=20.0, p_uncond=0.1))
  # Warmup and clipping are not stated by the paper; ADM uses neither, we keep a short warmup.
  config.optim.update(dict(learning_rate=3e-4, warmup_steps=1000, ema_rate=0.9999, grad_clip_norm=1.0))
  config.train.update(dict(
      batch_size=2048, num_steps=400_000, log_every=100, checkpoint_every=5_000, preview_every=20_000))
  config.sampling.update(dict(
      sampler='ancestral', num_steps=256, variance_interp=0.3, clip_x=True,
      num_samples=50_000, batch_size=2048))
  config.guidance.weights = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0)
  return default.apply_arg(config, arg, PRESETS)


def sweeps():
  """The paper's sweeps; autoguidance's guide for the frontier: 128 of the 192 base channels (the widest
  that keeps 64-channel heads at every attention level) and a quarter of the steps."""
  return default.paper_sweeps(guide=(('model.base_channels', 128), ('train.num_steps', 100_000)))
