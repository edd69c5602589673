#!/usr/bin/env bash
# The first run on a CUDA machine, in one command that ends within 8 minutes:
#   bash benchmarks/gpu_check.sh            (writes results/gpu_check/: every log and the bench JSON)
# 1. the test suite's CUDA paths (pytest -m cuda: GPU vs CPU step, bf16 and fp16 with the grad scaler,
#    the batched fbank on the device);
# 2. a bf16 pretraining run of 300 steps of the laptop recipe on the embedded set, on every GPU the
#    machine has (torchrun: nccl and SyncBatchNorm in the heads when there are two or more);
# 3. the step benchmark for ViT-S and ViT-B in bf16, with the utilisation of the GPU's measured bf16 peak.
# Each part has its own time limit, so one that hangs cannot take the others with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
status=0
run() {  # run NAME SECONDS CMD...: its output in $OUT/NAME.log, its time and exit status on stdout
    local name=$1 limit=$2; shift 2
    local tic=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - tic)) s (log: $OUT/$name.log)"
    tail -n 3 "$OUT/$name.log"
    [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
gpus=$(nvidia-smi -L | wc -l)
run tests 150 python -m pytest -q -m cuda -rs tests/
run pretrain 150 torchrun --standalone --nproc_per_node="$gpus" -m pretrain --config configs/pretrain/tiny.yaml \
    train.precision=bf16 train.max_steps=300 train.save_every_steps=300 data.num_workers=6 output_dir="$OUT/pretrain"
run bench 180 python benchmarks/bench.py --device cuda --archs small,base --precisions bf16 --no-inference \
    --out "$OUT/bench.json"
sed -n '/^1\. pretraining step/,/^$/p' "$OUT/bench.log"
exit $status
