"""Issue 35's targets on examples/gpt (2 workers, 300 steps, the same seed and batches in every
run): the DDP twin (torchrun, gloo, torch.optim.AdamW), qtrain's fp32 Adam with decoupled decay
and clipping of the mean gradient, and 1-bit Efficient-Adam with several uncompressed warm-ups.
Validation loss at every 50 steps and the bytes each run sent; results in OUT/results.json, the
table in OUT/table.md and the curves in OUT/curves.png.

    python benchmarks/gpt_recipe.py OUT [--warmups 0,30,60,100] [--steps 300]

The runs go one after another (each uses the 2 cores); losses do not depend on the host's load.
A rerun into the same OUT reuses the runs whose results are there (``seconds`` is then None)."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT = ROOT / "examples" / "gpt"
BIN = Path(sys.executable).parent


def _run(cmd, what, result: Path):
    """Run ``cmd`` unless ``result`` exists (a rerun with more warm-ups reuses the runs it has)."""
    if result.is_file():
        return None
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{what} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.time() - t0


def main():
    a = argparse.ArgumentParser()
    a.add_argument("out")
    a.add_argument("--warmups", default="0,30,60,100")
    a.add_argument("--steps", type=int, default=300)
    a.add_argument("--skip-ddp", action="store_true")
    args = a.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--max-iters", str(args.steps)]
    mpiexec = os.environ.get("QTRAIN_MPIEXEC", str(BIN / "mpiexec")).split()
    runs = []
    if not args.skip_ddp:
        js = out / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        s = _run([*cmd, str(GPT / "train_ddp.py"), *flags, "--out-json", str(js)], "DDP", js)
        runs.append({"name": "DDP AdamW (torchrun, gloo)", "evals": json.loads(js.read_text()), "seconds": s})
    variants = [("qtrain adam, codec none", "adam.yaml", [])]
    none = [
        "uplink.codec=none",
        "downlink.codec=none",
        "uplink.error_feedback=false",
        "downlink.error_feedback=false",
    ]
    # Efficient-Adam's rule with nothing compressed: what no warm-up can beat (its per-worker moments)
    variants.append(
        (
            "qtrain efficient-adam, codec none throughout",
            "efficient-adam.yaml",
            [*none, "algorithm.uncompressed_steps=0"],
        )
    )
    for w in [int(v) for v in args.warmups.split(",")]:
        name = f"qtrain efficient-adam 1-bit, {w} uncompressed steps"
        variants.append((name, "efficient-adam.yaml", [f"algorithm.uncompressed_steps={w}"]))
    for name, config, sets in variants:
        tag = (
            name.split(",")[0].replace("qtrain ", "").replace(" ", "-")
            + "-"
            + "-".join(s.split("=")[-1] for s in sets)
        )
        js, run_dir = out / f"{tag}.json", out / f"run-{tag}"
        extra = [x for s in sets for x in ("--set", s)]
        cmd = [
            *mpiexec,
            "-n",
            "3",
            sys.executable,
            str(GPT / "train.py"),
            "--config",
            str(GPT / "configs" / config),
        ]
        s = _run([*cmd, *flags, *extra, "--out", str(run_dir), "--out-json", str(js)], name, js)
        summary = json.loads((run_dir / "summary.json").read_text())
        runs.append(
            {
                "name": name,
                "evals": json.loads(js.read_text()),
                "seconds": s,
                "bytes_up": summary["bytes_up"],
                "bytes_down": summary["bytes_down"],
            }
        )
        (out / "results.json").write_text(json.dumps(runs, indent=1))
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    table(runs, out)
    plot(runs, out)


def table(runs, out):
    fp32 = next(r for r in runs if r["name"].startswith("qtrain adam"))
    ddp = next((r for r in runs if r["name"].startswith("DDP")), None)
    steps = [s for s, _ in fp32["evals"]]
    lines = [
        "| run | "
        + " | ".join(f"step {s}" for s in steps)
        + " | vs DDP (max over evals) | final vs qtrain fp32 | bytes up+down | vs fp32 bytes |",
        "|---|" + "---:|" * (len(steps) + 4),
    ]
    total32 = fp32["bytes_up"] + fp32["bytes_down"]
    for r in runs:
        vals = dict((s, v) for s, v in r["evals"])
        cells = [f"{vals[s]:.4f}" if s in vals else "" for s in steps]
        vs_ddp = ""
        if ddp is not None:
            d = dict((s, v) for s, v in ddp["evals"])
            vs_ddp = f"{max(abs(vals[s] - d[s]) / d[s] for s in steps) * 100:.4f}%"
        final = (r["evals"][-1][1] / fp32["evals"][-1][1] - 1) * 100
        b = r.get("bytes_up", 0) + r.get("bytes_down", 0)
        ratio = f"{total32 / b:.1f}x fewer" if b else ""
        lines.append(
            f"| {r['name']} | "
            + " | ".join(cells)
            + f" | {vs_ddp} | {final:+.2f}% | {b / 1e6:.1f} MB | {ratio} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in sorted(runs, key=lambda r: r["name"].startswith("DDP")):  # DDP last, dashed, on top
        s, v = zip(*r["evals"], strict=True)
        ddp = r["name"].startswith("DDP")
        style = (
            {"marker": "x", "ms": 6, "ls": "--", "color": "black", "lw": 1}
            if ddp
            else {"marker": "o", "ms": 3}
        )
        ax.plot(s, v, label=r["name"], **style)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("examples/gpt: 2 workers, validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


if __name__ == "__main__":
    main()
