"""Validate ``qtrain analyze --project`` against emulated runs at two bandwidths, or with two
numbers of serving ranks.

    python benchmarks/validate_projection.py runs/bench-network runs/bench-network-250mbit
    python benchmarks/validate_projection.py runs/bench-network runs/bench-network-2-servers
    python benchmarks/validate_projection.py runs/gpt-time-to-target/100mbit runs/gpt-time-to-target/1gbit

(the last: two ``qtrain bench network --script`` outputs, whose qtrain runs keep their traces in
each run's ``run_dir``)

For every config the two ``qtrain bench network`` output directories share, the model built from
one run's trace predicts the other run's step time (same workers, the other run's bandwidth and
serving ranks), and the prediction is compared with what that run measured (median step time
after the warm-up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qtrain.analysis.projection import PerfModel
from qtrain.io.trace import read_trace


def main(dirs: list[str]) -> int:
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    unshaped = [d for d, r in zip(dirs, runs, strict=True) if r["link"]["rate_bps"] is None]
    if unshaped:
        print(f"{unshaped[0]}: unshaped links have no rate to project to or from; give two shaped runs")
        return 2
    print(f"{'config':<22}{'from':>14}{'to':>14}{'predicted s':>13}{'measured s':>12}{'error':>8}")
    worst = 0.0
    names = [{r["name"] for r in run["runs"] if r["kind"] == "qtrain"} for run in runs]
    for name in sorted(names[0] & names[1]):
        for src, dst in ((0, 1), (1, 0)):
            target = next(r for r in runs[dst]["runs"] if r["name"] == name)
            source = next(r for r in runs[src]["runs"] if r["name"] == name)
            trace = Path(source["run_dir"]) if "run_dir" in source else Path(dirs[src]) / "runs" / name
            steps, evals, attrs = read_trace(trace / "trace.h5")
            model = PerfModel.from_trace(steps, attrs, runs[src]["warmup"], evals)
            k = runs[dst].get("servers", 1)
            predicted = model.predict(runs[dst]["link"]["rate_bps"], servers=k)["step_s"]
            measured = target["seconds_per_step"]["median_s"]
            error = predicted / measured - 1
            worst = max(worst, abs(error))
            at = [f"{r['link']['rate_bps'] / 1e6:g}M K={r.get('servers', 1)}" for r in (runs[src], runs[dst])]
            print(f"{name:<22}{at[0]:>14}{at[1]:>14}{predicted:>13.3f}{measured:>12.3f}{error:>+8.1%}")
    print(f"largest error {worst:.1%} (target: within 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
