#!/usr/bin/env bash
# Scale-out on the GPUs of one machine: the same run on one device, with torch DDP and FSDP2 (torchrun,
# one process per GPU), on JAX data and fsdp meshes (one process, all GPUs), and a torch DDP run resumed
# half-way as a JAX fsdp run; then benchmarks/scaleout_compare.py prints each run's largest per-step
# loss and final-weight difference from the single-device run of its framework (scaleout.json).
#
# Usage on a GPU machine, from the repository root:   OUT=/some/dir bash benchmarks/gpu_scaleout.sh
#   NGPU (default: nvidia-smi's count) sets torchrun's --nproc-per-node and the JAX mesh size; with one
#   GPU every sharded run has one rank / a one-device mesh (the code paths, not a speed-up).
# CPU dry run (what tests/test_gpu_scaleout_script.py runs): DEVICE=cpu NGPU=2 CONFIG=tiny.json STEPS=4 ...
#   (torch: gloo ranks; JAX: NGPU host devices through XLA_FLAGS). STAGES picks a subset of the runs.
# Multi-host: see the README's "Scale out" section (torchrun --nnodes, JAX_COORDINATOR_ADDRESS).
set -u
OUT=${OUT:-/tmp/twinformer-scaleout}
mkdir -p "$OUT"
DEVICE=${DEVICE:-gpu}
CONFIG=${CONFIG:-configs/toy.json}
STEPS=${STEPS:-200}
HALF=$(( STEPS / 2 ))
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NGPU" -ge 1 ] 2>/dev/null || { echo "no GPU found: set NGPU (and DEVICE=cpu for a dry run)"; exit 2; }
STAGES=${STAGES:-torch-single torch-ddp torch-fsdp jax-single jax-data jax-fsdp jax-fsdp-from-torch-ddp}
RUNS=${RUNS:-$OUT/runs}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$DEVICE" = cpu ]; then export XLA_FLAGS="--xla_force_host_platform_device_count=$NGPU" JAX_PLATFORMS=cpu; fi
py=python3
# Every run: the config's settings on DEVICE, STEPS steps, a checkpoint at HALF (where the resumed run starts).
$py -c "
from shared.training.train_config import TrainConfig
print(TrainConfig.load('$CONFIG').replace(device='$DEVICE', save_every=$HALF, keep_last=None, log_every=1).to_json())
" > "$OUT/config.json" || exit 2
common=(--config "$OUT/config.json" --steps "$STEPS" --no-progress)

has() { [[ " $STAGES " == *" $1 "* ]]; }
run() {  # name, command...: the command's output in $OUT/<name>.log, its exit status noted
  local name=$1; shift
  echo "== $name: $*" >> "$OUT/session.log"
  "$@" > "$OUT/$name.log" 2>&1
  echo "== $name exit $?" >> "$OUT/session.log"
}
{ date; command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1; echo "NGPU=$NGPU DEVICE=$DEVICE STEPS=$STEPS"; } > "$OUT/session.log"
rm -rf "$RUNS"

has torch-single && run torch-single $py -m twinformer.cli train --framework torch "${common[@]}" --run-dir "$RUNS/torch-single"
for strategy in ddp fsdp; do
  has torch-$strategy && run torch-$strategy torchrun --standalone --nproc-per-node "$NGPU" -m twinformer.cli train \
    --framework torch --strategy $strategy "${common[@]}" --run-dir "$RUNS/torch-$strategy"
done
has jax-single && run jax-single $py -m twinformer.cli train --framework jax "${common[@]}" --run-dir "$RUNS/jax-single"
for axis in data fsdp; do
  has jax-$axis && run jax-$axis $py -m twinformer.cli train --framework jax --mesh $axis="$NGPU" "${common[@]}" \
    --run-dir "$RUNS/jax-$axis"
done
has jax-fsdp-from-torch-ddp && run jax-fsdp-from-torch-ddp $py -m twinformer.cli train --framework jax \
  --mesh fsdp="$NGPU" --resume "$RUNS/torch-ddp/checkpoints/step_$(printf %07d $HALF)" --steps "$STEPS" --no-progress \
  --run-dir "$RUNS/jax-fsdp-from-torch-ddp"

$py -m benchmarks.scaleout_compare "$RUNS" --json "$OUT/scaleout.json" | tee -a "$OUT/session.log"
