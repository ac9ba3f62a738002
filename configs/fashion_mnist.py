"""The embedded default: Fashion-MNIST 28×28, a ~1M-parameter U-Net sized for a 2-core CPU.

python launch.py --config=configs/fashion_mnist.py --workdir=runs/fm
python launch.py --config=configs/fashion_mnist.py:smoke --workdir=/tmp/smoke    # the tiny test preset
"""

from cfg.sweep import Sweep
from configs import default


# `smoke`: a ~30k-parameter U-Net and a few steps, for tests and quick checks (configs/smoke.py is this).
PRESETS = {
    'smoke': dict(overrides={
        'model.base_channels': 8, 'model.channel_mult': (1, 2), 'model.num_res_blocks': 1,
        'model.attn_resolutions': (14,), 'model.head_channels': 8, 'model.dropout': 0.0,
        'model.norm_groups': 4,
        'optim.learning_rate': 1e-3, 'optim.warmup_steps': 5, 'optim.ema_rate': 0.99,
        'train.batch_size': 16, 'train.num_steps': 6, 'train.log_every': 2, 'train.checkpoint_every': 3,
        'train.keep_checkpoints': 2, 'train.preview_every': 6,
        'sampling.sampler': 'ddim', 'sampling.num_steps': 4, 'sampling.num_samples': 20,
        'sampling.batch_size': 10,
        'guidance.weights': (0.0, 1.0)}),
}


def get_config(arg=None):
  config = default.get_config()
  config.data.name = 'fashion_mnist'
  config.data.image_size = 28
  config.data.num_classes = 10

  config.model.update(dict(
      base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(7,),
      head_channels=32, dropout=0.1, norm_groups=8))
  config.optim.update(dict(learning_rate=1e-3, warmup_steps=200, ema_rate=0.999))
  # On 2 CPU cores, 2,500 steps take 12 to 15 minutes with the oneDNN convolutions (README), and about 20
  # minutes without them. Samples follow their labels from about 500 steps.
  config.train.update(dict(
      batch_size=64, num_steps=2_500, log_every=50, checkpoint_every=250, preview_every=500))
  # DDIM with 16 steps and 256 samples per weight keep an evaluation of all nine weights to minutes on
  # a 2-core CPU; Fréchet distances from 256 samples are biased upward but comparable across w. The nine
  # weights' guided calls (9 × 2B = 2,304 rows) run as calls of at most 64 rows: 1.22 ms per image-NFE against
  # 1.38 for whole calls (experiments/throughput/bench_sweep_program.txt).
  config.sampling.update(dict(
      sampler='ddim', num_steps=16, num_samples=256, batch_size=128, max_network_batch=64))
  config.guidance.weights = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 4.0)
  return default.apply_arg(config, arg, PRESETS)


# Measured on the 2-core CPU, medians: the evaluation's sampling program, 9 weights × 128 images in calls of
# at most 64 rows, 1.25 ms per image-NFE (experiments/throughput/bench_sweep_program.json, commit e04798b,
# 2 rounds; the best was 1.22); a train step 0.293 s (bench_peer_recheck_run2.json, commit 0064b43, 12 rounds).
SECONDS_PER_IMAGE_NFE, SECONDS_PER_TRAIN_STEP = 1.25e-3, 0.29


COST_SOURCE = 'the 2-core CPU of experiments/throughput/bench_sweep_program.json and bench_peer_recheck_run2.json'


def sweeps():
  """Table 1's columns (p_uncond, one training run each; `table1`: with the paper's sampler, two seeds
  each), Table 2's (T, sampling one run), and the guided-sampling frontier on a run 4× the default's
  length (checkpoints kept along the way)."""
  return {
      'p_uncond': Sweep('diffusion.p_uncond', (0.1, 0.2, 0.5)),
      'num_steps': Sweep('sampling.num_steps', (4, 8, 16, 32), train=False,
                         base_overrides=(('diffusion.p_uncond', 0.1),)),
      # Table 1 again with the paper's sampler (ancestral, T = 64) and the frontier's protocol (512
      # balanced samples per w, the w grid refined once), each value trained with two seeds for the spread.
      'table1': Sweep('diffusion.p_uncond', (0.1, 0.2, 0.5), seeds=(0, 1), base_overrides=(
          ('sampling.sampler', 'ancestral'), ('sampling.num_steps', 64), ('sampling.num_samples', 512),
          ('sampling.batch_size', 256), ('guidance.weights', (0.0, 0.3, 1.0, 2.0, 3.0, 4.0)), ('eval.refine', 1)),
          run='table1', seconds_per_image_nfe=SECONDS_PER_IMAGE_NFE, seconds_per_train_step=SECONDS_PER_TRAIN_STEP,
          cost_source=COST_SOURCE),
      'frontier': default.frontier_grid(
          base_overrides=(('diffusion.p_uncond', 0.1), ('train.num_steps', 10_000),
                          ('train.keep_checkpoints', 40), ('sampling.num_samples', 512),
                          ('sampling.batch_size', 256), ('guidance.weights', (0.0, 0.3, 1.0, 2.0, 3.0, 4.0)),
                          ('eval.refine', 1)),
          checkpoints=(2_500, 5_000, 10_000),
          # Autoguidance's guide: half the channels and a quarter of the steps of the run it guides.
          guide=(('model.base_channels', 8), ('train.num_steps', 2_500)), seconds_per_image_nfe=SECONDS_PER_IMAGE_NFE,
          seconds_per_train_step=SECONDS_PER_TRAIN_STEP,
          cost_source=COST_SOURCE),
  }
