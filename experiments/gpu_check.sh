#!/usr/bin/env bash
# The device checks, in one call on a lent GPU: sampler ratios (issue targets), cuDNN attention against XLA's
# (equality, and the ImageNet-64 bf16 step with each) and train-step MFU.
#   experiments/gpu_check.sh                      # on the GPU machine; logs under $OUT
#   PYTHON=.venv/bin/python experiments/gpu_check.sh   # dry run of the same steps, here
#   ONLY="train_fmnist train_in64_bf16" experiments/gpu_check.sh   # some of the steps
# Without PYTHON it uses the machine's python3 (its jax with CUDA); the packages that lacks travel
# as wheels in .whl/ (ml_collections, grain, array_record, portpicker).
set -u
py=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
SAMPLER_BATCH=${SAMPLER_BATCH:-256} IN64_BATCH=${IN64_BATCH:-64}
run() {  # run NAME SECONDS COMMAND...: one bounded step, its log under $OUT
  local name=$1 seconds=$2; shift 2
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
  echo "=== $name: $*"
  timeout "$seconds" "$@" 2>&1 | grep -v -E "^(W|I)[0-9]{4} " | tee "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null
"$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
                                          "optax", optax.__version__, jax.devices())'
run sampler_b16 150 "$py" experiments/bench_sampler.py --batch 16 --repeats 15
run sampler_big 150 "$py" experiments/bench_sampler.py --batch "$SAMPLER_BATCH" --repeats 15
run train_fmnist 90 "$py" experiments/bench_train.py --config=fashion_mnist --steps 50
run train_fmnist_scan8 120 "$py" experiments/bench_train.py --config=fashion_mnist --steps 10 --steps_per_call 8
run attention_cudnn 120 "$py" -m pytest -q -p no:cacheprovider tests/test_unet.py -k "attention_impl or cudnn"
run train_in64_bf16 200 "$py" experiments/bench_train.py --config=imagenet64 --batch="$IN64_BATCH" \
    --bf16 --steps 10
run train_in64_bf16_xla_attention 200 "$py" experiments/bench_train.py --config=imagenet64 \
    --batch="$IN64_BATCH" --bf16 --attention_impl=xla --steps 10
run train_in64_fp32 200 "$py" experiments/bench_train.py --config=imagenet64 --batch="$IN64_BATCH" \
    --steps 10
