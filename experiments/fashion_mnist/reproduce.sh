#!/usr/bin/env bash
# The Fashion-MNIST reproduction of the paper's Tables 1 and 2 (see README.md in this folder).
# Trains one model per p_uncond, evaluates every guidance weight of configs/fashion_mnist.py on each,
# sweeps the number of sampling steps T on the p_uncond = 0.1 model, repeats one column with another
# sampling seed, and collects the combined tables and plots into experiments/fashion_mnist/stepSTEP/.
# STEP is the checkpoint evaluated (all runs must have reached it); pass it as the first argument.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEP=${1:?usage: reproduce.sh STEP}
ROOT=runs/fm_sweep
OUT=experiments/fashion_mnist/step$STEP
for p in 0.1 0.2 0.5; do
  python launch.py --config=configs/fashion_mnist.py --workdir=$ROOT/diffusion.p_uncond=$p \
      --config.diffusion.p_uncond=$p --config.train.num_steps=$STEP
  python launch.py --config=configs/fashion_mnist.py --workdir=$ROOT/diffusion.p_uncond=$p \
      --config.diffusion.p_uncond=$p --config.mode=eval --config.eval.checkpoint_step=$STEP
done
for T in 4 8 32; do
  python launch.py --config=configs/fashion_mnist.py --workdir=$ROOT/diffusion.p_uncond=0.1 \
      --config.diffusion.p_uncond=0.1 --config.mode=eval --config.eval.checkpoint_step=$STEP \
      --config.sampling.num_steps=$T
done
python launch.py --config=configs/fashion_mnist.py --workdir=$ROOT/diffusion.p_uncond=0.1 \
    --config.diffusion.p_uncond=0.1 --config.mode=eval --config.eval.checkpoint_step=$STEP \
    --config.sampling.seed=2
python sweep.py --config=configs/fashion_mnist.py --sweep=p_uncond --root=$ROOT --collect \
    --config.eval.checkpoint_step=$STEP --out=$OUT/p_uncond
python sweep.py --config=configs/fashion_mnist.py --sweep=num_steps --root=$ROOT --collect \
    --config.eval.checkpoint_step=$STEP --out=$OUT/num_steps
