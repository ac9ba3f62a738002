"""Paper Table 2 setting: ImageNet 128×128, ADM 128×128 U-Net (paper.md §5), T ∈ {128, 256, 1024}.

python launch.py --config=configs/imagenet128.py --workdir=runs/in128
python launch.py --config=configs/imagenet128.py:h100x8 --workdir=runs/in128   # a hardware preset (PRESETS)
"""

from configs import default


# Hardware presets (see configs/imagenet64.py); memory fits in experiments/memory.md.
PRESETS = {
    'h100x8': dict(devices=8, memory_gb=80, overrides={
        'train.grad_accum_steps': 2, 'eval.weights_per_program': 7, 'sampling.batch_size': 256}),
    'tpu_v5p_64': dict(devices=32, memory_gb=95, overrides={
        'eval.weights_per_program': 7, 'sampling.batch_size': 1024}),
}


def get_config(arg=None):
  config = default.get_config()
  config.data.update(dict(name='imagenet128', image_size=128, num_classes=1000, random_flip=True))
  config.model.update(dict(
      base_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2, attn_resolutions=(32, 16, 8),
      num_heads=4, head_channels=-1, dropout=0.0, resblock_updown=True))
  config.diffusion.update(dict(logsnr_min=-20.0, logsnr_max=20.0, p_uncond=0.1))
  config.optim.update(dict(learning_rate=1e-4, warmup_steps=1000, ema_rate=0.9999, grad_clip_norm=1.0))
  config.train.update(dict(
      batch_size=256, num_steps=2_700_000, log_every=100, checkpoint_every=10_000, preview_every=50_000))
  config.sampling.update(dict(
      sampler='ancestral', num_steps=256, variance_interp=0.2, clip_x=True,
      num_samples=50_000, batch_size=1024))
  config.guidance.weights = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0)
  return default.apply_arg(config, arg, PRESETS)


def sweeps():
  """The paper's sweeps; autoguidance's guide for the frontier: half the channels, a quarter of the steps."""
  return default.paper_sweeps(guide=(('model.base_channels', 128), ('train.num_steps', 675_000)))
