#!/usr/bin/env bash
# The speed issue's GPU measurements in one prepared run (under 5 minutes on one H100 or H200):
#   1. training throughput at book-ch4 size, float32 pinned to full precision, all three stacks;
#   2. training throughput of a >= 100M-parameter model (d 1024, 6+6 layers, FFN 4096, V 8000,
#      sequences of 128, batches of MAX_TOKENS tokens) in bfloat16, all three stacks;
#   each with MFU against the bf16 and fp32 matmul peaks measured in the same run;
#   3. beam-4 decoding of test_2016_flickr, KV cache vs none, both stacks;
#   then $OUT/speed.md: the markdown tables for benchmarks/README.md (benchmarks/speed_report.py).
# Fast paths on: fused attention, fused Adam. PRECISION=bf16-mixed (where the train config has that
# field) trains torch_impl/jax_impl through their training backends in that mode; COMPILE=1 adds
# torch.compile. Usage on the device machine, Multi30k .gz files in $TWINFORMER_MULTI30K_DIR
# (default .data/multi30k):   OUT=/some/dir bash benchmarks/gpu_speed.sh
# CPU dry run with tiny sizes (what tests/test_gpu_speed_script.py runs):   DRY_RUN=1 OUT=/tmp/x bash ...
set -u
OUT=${OUT:-/tmp/twinformer-speed}
mkdir -p "$OUT"
START=$SECONDS
BUDGET_S=${BUDGET_S:-290}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export TWINFORMER_MULTI30K_DIR=${TWINFORMER_MULTI30K_DIR:-$PWD/.data/multi30k}
py=python3
left() { echo $(( BUDGET_S - (SECONDS - START) )); }
run() {  # run NAME TIMEOUT_S CMD...: output to $OUT/NAME.log, skipped when the budget is spent
  local name=$1 limit=$2; shift 2
  local avail=$(( $(left) - 5 ))
  if [ "$avail" -lt 20 ]; then echo "$name skipped: $(left) s left" >> "$OUT/session.log"; return; fi
  [ "$limit" -gt "$avail" ] && limit=$avail
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name exit $? after $(( SECONDS - START )) s" >> "$OUT/session.log"
}

if [ "${DRY_RUN:-0}" = 1 ]; then
  DEVICE=cpu
  SMALL=(--preset book-ch4 --set d_model=16 num_heads=2 d_ff=24 src_vocab_size=37 tgt_vocab_size=41
         num_encoder_layers=1 num_decoder_layers=1 --src-len 5 --tgt-len 4 --peak-sizes 32)
  BIG=("${SMALL[@]}" --max-tokens 20)
  STEPS=(--steps 1 --warmup 1 --rounds 1)
  DECODE=(--config configs/toy.json --sentences 8 --batch-size 4 --len-a 0 --len-b 3)
else
  DEVICE=gpu
  SMALL=(--preset book-ch4 --batch 128 --src-len 24 --tgt-len 24)
  BIG=(--preset base --set d_model=1024 num_heads=16 d_ff=4096 num_encoder_layers=6 num_decoder_layers=6
       src_vocab_size=8000 tgt_vocab_size=8000 max_len=256 attention_dropout=0.0
       --src-len 128 --tgt-len 128 --max-tokens "${MAX_TOKENS:-32768}")
  STEPS=(--steps 10 --warmup 3 --rounds 2)
  DECODE=(--config configs/multi30k-cpu-small.json --batch-size 128)
fi
FAST=(--attention fused --torch-adam fused)
[ -n "${PRECISION:-}" ] && FAST+=(--precision "$PRECISION")
[ "${COMPILE:-0}" = 1 ] && FAST+=(--torch-compile --compile-reference)

{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  $py -c "import torch, jax; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices())"
} > "$OUT/session.log" 2>&1

run train-book-ch4-fp32 150 $py -m benchmarks.train_throughput --device $DEVICE --dtype float32 "${SMALL[@]}" \
  "${FAST[@]}" "${STEPS[@]}" --json "$OUT/train-book-ch4-fp32.json"
run train-100m-bf16 200 $py -m benchmarks.train_throughput --device $DEVICE --dtype bfloat16 "${BIG[@]}" \
  "${FAST[@]}" "${STEPS[@]}" --json "$OUT/train-100m-bf16.json"
run decode-beam4 120 $py -m benchmarks.decode_speed --device $DEVICE --beam 4 "${DECODE[@]}" \
  --json "$OUT/decode-beam4.json"
$py -m benchmarks.speed_report "$OUT"/train-book-ch4-fp32.json "$OUT"/train-100m-bf16.json \
  "$OUT"/decode-beam4.json > "$OUT/speed.md" 2>> "$OUT/session.log"
{ echo "done after $(( SECONDS - START )) s"; date; } >> "$OUT/session.log"
