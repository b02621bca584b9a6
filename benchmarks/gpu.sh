#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 9, in two parts that each fit one device call:
#   bash benchmarks/gpu.sh a   # cuDNN LSTM equivalence, model timings, trainer vs PyTorch (256, 1024 envs)
#   bash benchmarks/gpu.sh b   # trainer vs PyTorch at 4096 envs, bfloat16, the scan backend
# Logs go to $OUT (or ./gpu-out). Needs jax with CUDA, flax, optax, orbax, torch with CUDA and
# the project's other requirements (pydantic, pyyaml, tqdm) importable.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX would otherwise take 75% of the GPU's memory at start and leave PyTorch too little.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
FULL=(--config ../configs/strategic_marl_v1.yaml --set training.rollout_len=32
  --set training.num_minibatches=4 --set training.unroll_learn=false)

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, keep going on failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -E "^\s*$|Warning|warn\(" | tail -25
  echo "=== $name done in $((SECONDS - start)) s (exit ${PIPESTATUS[0]})"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"

case "${1:-a}" in
a)
  step cudnn_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_models.py -k "cudnn or rnn_backend"
  cd benchmarks || exit 1
  step models_cudnn 120 python3 models.py --batch 256 --models mlmi,nwrqk --rnn-backend auto
  step models_scan 120 python3 models.py --batch 256 --models nwrqk --rnn-backend scan
  step population 120 python3 models.py --batch 256 --models nwrqk --population 8
  step train_small 330 python3 train.py "${FULL[@]}" --vs-torch --mfu --updates 3 --num-envs 256,1024
  ;;
b)
  cd benchmarks || exit 1
  step train_large 300 python3 train.py "${FULL[@]}" --vs-torch --mfu --updates 2 --num-envs 4096
  step train_bf16 150 python3 train.py "${FULL[@]}" --set training.compute_dtype=bfloat16 \
    --vs-torch --mfu --updates 3 --num-envs 1024
  step train_scan 150 python3 train.py "${FULL[@]}" --set training.rnn_backend=scan \
    --vs-torch --mfu --updates 3 --num-envs 1024
  ;;
esac
