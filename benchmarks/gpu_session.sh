#!/usr/bin/env bash
# One prepared GPU session (under 10 minutes on one H100): the README's Multi30k En->De result in both
# stacks (benchmarks/translation_result.py: both trainings at once on the one GPU, each capped at
# TRAIN_MINUTES, then test BLEU at their common step: greedy, averaged checkpoints, beam search), then
# the GPU training-throughput benchmark if time is left. What is worth keeping lands in $OUT (8 files).
#
# Usage on the device machine, from the repository root, with the Multi30k .gz files in
# $TWINFORMER_MULTI30K_DIR (default .data/multi30k):   OUT=/some/dir bash benchmarks/gpu_session.sh
# A dry run of the same steps on a CPU:  CONFIG=my-toy.json TRAIN_MINUTES=0.5 BENCH_ARGS="--steps 1" ...
set -u
OUT=${OUT:-/tmp/twinformer-gpu}
mkdir -p "$OUT"
START=$SECONDS
BUDGET_S=${BUDGET_S:-560}                   # the whole script; the benchmark runs only if time is left
TRAIN_MINUTES=${TRAIN_MINUTES:-5}
CONFIG=${CONFIG:-configs/multi30k-best.json}
DEVICE=${DEVICE:-gpu}
BENCH_ARGS=${BENCH_ARGS:---steps 20 --warmup 3 --rounds 2}
# Checkpoints are large (weights + Adam moments); RAM-backed storage keeps the saves fast.
RUNS=${RUNS:-$( [ -d /dev/shm ] && echo /dev/shm/twinformer-runs || echo runs/gpu-session )}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export TWINFORMER_MULTI30K_DIR=${TWINFORMER_MULTI30K_DIR:-$PWD/.data/multi30k}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/twinformer-jax-cache}  # train and evaluate share compiles
left() { echo $(( BUDGET_S - (SECONDS - START) )); }
py=python3

{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nproc; free -g | head -2
  $py -c "import sys, torch, jax, flax, optax, peft, tokenizers, sacrebleu; print(sys.version); print('torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'peft', peft.__version__, 'tokenizers', tokenizers.__version__, 'sacrebleu', sacrebleu.__version__); print(jax.devices())"
} > "$OUT/session.log" 2>&1

# 1. The BLEU result (train both, evaluate both at the common step).
rm -rf "$RUNS"
timeout $(( $(left) - 5 )) $py -m benchmarks.translation_result --config "$CONFIG" --out-dir "$RUNS" \
  --max-minutes "$TRAIN_MINUTES" --average 5 --beam 4 --eval-timeout-s 200 --json "$OUT/result.json" \
  > "$OUT/result.log" 2>&1
echo "translation_result exit $? after $(( SECONDS - START )) s" >> "$OUT/result.log"
for fw in torch jax; do
  cp "$RUNS/$fw/metrics.jsonl" "$OUT/metrics-$fw.jsonl" 2>/dev/null
  cat "$RUNS/train-$fw.log" "$RUNS/eval-$fw.log" > "$OUT/log-$fw.txt" 2>/dev/null
done

# 2. Training throughput on the now idle GPU, in the time left (float32 pinned to full precision).
if [ "$(left)" -gt 90 ]; then
  timeout $(( $(left) - 10 )) $py -m benchmarks.train_throughput --device "$DEVICE" $BENCH_ARGS \
    --json "$OUT/bench.json" >> "$OUT/session.log" 2>&1
  echo "benchmark exit $?" >> "$OUT/session.log"
else
  echo "benchmark skipped: $(left) s left" >> "$OUT/session.log"
fi
{ echo "done after $(( SECONDS - START )) s"; date; } >> "$OUT/session.log"
