"""Convergence benchmark: every algorithm at its default config on digits with 4 simulated workers,
against its own full-precision counterpart run in the same invocation.

    python benchmarks/convergence.py [--workers 4] [--seeds 3] [--json FILE]

Accuracy is the mean over seeds 0..S-1 (the seed changes the model init, shards, batches and
stochastic rounding); bytes are those of seed 0 (they do not depend on the seed for fixed-size codecs).

Counterparts: qadam and efficient-adam vs adam; ecq-sgd vs sgd; qcmd-adagrad and qrda-adagrad vs
themselves with codec `none` both ways. Targets (issue 3): within 1.5 accuracy points of the
counterpart, and at least 28x fewer uplink bytes with 1-bit codecs, 14x with 2-bit codecs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qtrain.config import load_config
from qtrain.engine.simulator import simulate

REPO = Path(__file__).resolve().parent.parent
CASES = [
    # (label, config, overrides, counterpart label)
    ("sgd", "sgd", [], None),
    ("adam", "adam", [], None),
    ("ecq-sgd", "ecq-sgd", [], "sgd"),
    ("qadam", "qadam", [], "adam"),
    ("efficient-adam", "efficient-adam", [], "adam"),
    ("qcmd-adagrad/none", "qcmd-adagrad", ["uplink.codec=none", "downlink.codec=none"], None),
    ("qcmd-adagrad", "qcmd-adagrad", [], "qcmd-adagrad/none"),
    ("qrda-adagrad/none", "qrda-adagrad", ["uplink.codec=none", "downlink.codec=none"], None),
    ("qrda-adagrad", "qrda-adagrad", [], "qrda-adagrad/none"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    for label, name, overrides, counterpart in CASES:
        runs = []
        for seed in range(args.seeds):
            cfg = load_config(REPO / "configs" / f"{name}.yaml", [*overrides, f"seed={seed}"])
            runs.append(simulate(cfg, args.workers, out=None, log=lambda _: None))
        s = runs[0]
        bits = s["uplink"]["bits"]
        row = {
            "label": label,
            "algorithm": s["algorithm"],
            "uplink": s["uplink"]["codec"],
            "uplink_bits": bits,
            "downlink": s["downlink"]["codec"],
            "test_accuracy": sum(r["final_test_accuracy"] for r in runs) / len(runs),
            "test_accuracy_per_seed": [r["final_test_accuracy"] for r in runs],
            "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"],
            "up_ratio_vs_fp32": s["compression_up"],
            "down_ratio_vs_fp32": s["compression_down"],
            "wall_seconds": sum(r["wall_seconds"] for r in runs) / len(runs),
            "counterpart": counterpart,
        }
        if counterpart:
            ref = rows[counterpart]
            row["accuracy_gap_points"] = 100 * (ref["test_accuracy"] - row["test_accuracy"])
            need = {1: 28, 2: 14}.get(bits) if s["uplink"]["codec"] != "none" else None
            row["target_met"] = row["accuracy_gap_points"] <= 1.5 and (
                need is None or row["up_ratio_vs_fp32"] >= need
            )
        rows[label] = row
    print(
        f"{'run':<20}{'uplink':>10}{'bits':>5}{'test acc':>10}{'gap pts':>9}{'up MB':>9}{'down MB':>9}"
        f"{'up x':>7}{'down x':>7}{'target':>8}"
    )
    for r in rows.values():
        gap = f"{r['accuracy_gap_points']:.2f}" if "accuracy_gap_points" in r else "-"
        target = {True: "met", False: "MISSED", None: "-"}[r.get("target_met")]
        print(
            f"{r['label']:<20}{r['uplink']:>10}{r['uplink_bits'] or '-':>5}"
            f"{r['test_accuracy']:>10.4f}{gap:>9}"
            f"{r['bytes_up'] / 1e6:>9.3f}{r['bytes_down'] / 1e6:>9.3f}{r['up_ratio_vs_fp32']:>7.1f}"
            f"{r['down_ratio_vs_fp32']:>7.1f}{target:>8}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(list(rows.values()), indent=2))
    return 0 if all(r.get("target_met", True) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
