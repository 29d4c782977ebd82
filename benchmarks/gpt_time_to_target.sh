#!/usr/bin/env bash
# Time to the DDP twin's final validation loss for examples/gpt on 4 workers (4 serving ranks),
# per-rank emulated links (docs/benchmarks.md, "Time to a target loss on a GPT"). Root, Linux.
#
#   bash benchmarks/gpt_time_to_target.sh [OUT]          # the main table: batch 16, three link rates
#   RATES=100mbit BATCH=4 bash benchmarks/gpt_time_to_target.sh runs/gpt-b4
#   RATES=100mbit PEERS=ddp,ddp-powersgd:16:30 RUNS="adam-4bit-330 adam-8bit-nearest" \
#       bash benchmarks/gpt_time_to_target.sh runs/gpt-more
#
# RUNS picks qtrain configurations by name (default: the main table's five), PEERS the DDP twins.
set -euo pipefail
OUT=${1:-runs/gpt-time-to-target}
PY=${PY:-.venv/bin/python}
K="--set runtime.servers=4"
ef="--set uplink.error_feedback=true --set downlink.error_feedback=true"
uniform() {  # bits rounding: both ways
  echo "--set uplink.codec=uniform --set uplink.bits=$1 --set uplink.rounding=$2 --set downlink.codec=uniform --set downlink.bits=$1 --set downlink.rounding=$2 $ef"
}
declare -A CONFIG=(
  [adam-fp32]="$K"
  [adam-8bit]="$K $(uniform 8 stochastic)"
  [adam-8bit-nearest]="$K $(uniform 8 nearest)"
  [adam-4bit]="$K $(uniform 4 nearest)"
  [adam-4bit-330]="$K $(uniform 4 nearest) --max-iters 330"
  [adam-4bit-360]="$K $(uniform 4 nearest) --max-iters 360"
  [efficient-adam-1bit]="$K --config examples/gpt/configs/efficient-adam.yaml"
)
runs=()
for name in ${RUNS:-adam-fp32 adam-8bit adam-4bit adam-4bit-360 efficient-adam-1bit}; do
  runs+=(--run "$name=${CONFIG[$name]}")
done
for RATE in ${RATES:-100mbit 1gbit unshaped}; do
  "$PY" -m qtrain bench network --bandwidth "$RATE" --workers 4 --servers 4 --warmup 10 \
    --script examples/gpt/train.py --twin examples/gpt/train_ddp.py \
    --peers "${PEERS:-ddp,ddp-fp16,ddp-powersgd:4:30}" "${runs[@]}" \
    --out "$OUT/$RATE" -- --max-iters 300 --eval-interval 25 --batch-size "${BATCH:-16}" | tee "$OUT-$RATE.txt"
done
