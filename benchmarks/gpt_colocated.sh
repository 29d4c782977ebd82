#!/usr/bin/env bash
# examples/gpt at 100 Mbit/s per-rank links, 4 workers: co-located shards against one and two
# separate serving ranks, time to the DDP twin's final loss (docs/benchmarks.md, "Co-located
# shards", issue 38). Root, Linux. About 13 minutes on 2 cores.
#
#   bash benchmarks/gpt_colocated.sh [OUT]          # OUT/colocated, OUT/1, OUT/2
set -euo pipefail
OUT=${1:-runs/gpt-colocated}
PY=${PY:-.venv/bin/python}
ef="--set uplink.error_feedback=true --set downlink.error_feedback=true"
u4="--set uplink.codec=uniform --set uplink.bits=4 --set uplink.rounding=nearest"
u4="$u4 --set downlink.codec=uniform --set downlink.bits=4 --set downlink.rounding=nearest $ef"
for layout in colocated 1 2; do
  K="--set runtime.servers=$layout"
  "$PY" -m qtrain bench network --bandwidth "${RATE:-100mbit}" --workers 4 --servers "$layout" --warmup 10 \
    --script examples/gpt/train.py --peers '' --target "${TARGET:-2.0784}" \
    --run "adam-fp32-$layout=$K" --run "adam-4bit-360-$layout=$K $u4 --max-iters 360" \
    --out "$OUT/$layout" -- --max-iters 300 --eval-interval 25 --batch-size 16 | tee "$OUT-$layout.txt"
done
