#!/usr/bin/env bash
# One prepared device session (about 7 minutes on one H100): GPU benchmarks on an idle GPU, then
# Multi30k En->De training in both stacks side by side (fixed wall-clock budget, then test BLEU),
# with the GPU parity suite (float32-highest, tf32, bfloat16 rows) running meanwhile.
# Usage on the device machine, from the repository root, with the Multi30k .gz files in
# $TWINFORMER_MULTI30K_DIR:  OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/twinformer-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export TWINFORMER_MULTI30K_DIR=${TWINFORMER_MULTI30K_DIR:-$PWD/.data/multi30k}
TRAIN_MINUTES=${TRAIN_MINUTES:-3.5}
py=python3

{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import sys, torch, jax, flax, optax, peft; print(sys.version); print('torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'peft', peft.__version__); print(jax.devices())"
} > "$OUT/env.log" 2>&1

# 1. Throughput on an otherwise idle GPU (float32 pinned to full precision, then bf16).
timeout 150 $py -m benchmarks.train_throughput --device gpu --steps 20 --warmup 3 --rounds 2 \
  --json "$OUT/bench-fp32.json" > "$OUT/bench.log" 2>&1
timeout 90 $py -m benchmarks.train_throughput --device gpu --dtype bfloat16 --steps 20 --warmup 3 --rounds 2 \
  >> "$OUT/bench.log" 2>&1

# 2. The README's BLEU runs, both stacks at once on the same GPU.
for fw in torch jax; do
  ( timeout $(( ${TRAIN_MINUTES%.*} * 60 + 150 )) $py -m twinformer.cli train --framework $fw \
      --config configs/multi30k-best.json --run-dir runs/m30k-$fw --max-minutes "$TRAIN_MINUTES" --no-progress
    timeout 120 $py -m twinformer.cli evaluate --checkpoint runs/m30k-$fw --framework $fw \
      --corpus multi30k --split test_2016_flickr
    cp runs/m30k-$fw/metrics.jsonl "$OUT/metrics-$fw.jsonl"
  ) > "$OUT/train-$fw.log" 2>&1 &
done

# 3. Meanwhile: the parity suite on the GPU, one run per tolerance row.
{ echo "=== parity_tests --device gpu --precision float32 (whole suite)"
  timeout 200 $py -m pytest parity_tests --device gpu --precision float32 -q -p no:cacheprovider 2>&1 | tail -60
  for precision in tf32 bfloat16; do
    echo "=== forward/gradient/training parity --device gpu --precision $precision"
    timeout 90 $py -m pytest parity_tests/test_forward.py parity_tests/test_gradients.py \
      parity_tests/test_training_parity.py --device gpu --precision $precision -q -p no:cacheprovider 2>&1 | tail -40
  done
} > "$OUT/parity.log" 2>&1

wait
date >> "$OUT/env.log"
