"""ECQ-SGD's compression without loss (Wu et al., ICML 2018): "gradients compressed by a factor of
up to two orders of magnitude without performance degradation" (over 80x on CIFAR-10 in the
paper, with Huffman coding of the quantized codes).

Measured here: the largest uplink compression ratio (fp32 bytes / bytes sent) at which ECQ-SGD's
test accuracy stays within 0.5 points of 32-bit SGD's, for LeNet-5 on Fashion-MNIST, over the
quantizer widths qtrain has: `uniform` with s = 7, 3 and 1 levels (4, 3 and 2 bits per element,
linf scale per bucket, stochastic rounding) and buckets of 512 and 4,096 elements (one fp32
scale each). qtrain has no entropy-coding stage yet, so ratios stop near 16x (2 bits + scales);
the paper's two orders of magnitude need one (issue #13 item 2, open). Chosen here: 4 workers,
batch 32 each, 2,000 steps, lr 0.02 with momentum 0.9 on the server for every run,
error-feedback alpha = beta = 1 (configs/ecq-sgd.yaml's). A first try at configs/sgd.yaml's lr
0.1 diverged with a quantized uplink (NaN in a bucket).
"""

from __future__ import annotations

from pathlib import Path

from qtrain.reproduce.runs import figure, run, write_results

TOLERANCE = 0.005  # accuracy, within 0.5 points
VARIANTS = {"32-bit SGD": ("sgd.yaml", [])} | {
    f"ECQ-SGD {bits}-bit, bucket {bucket}": (
        "ecq-sgd.yaml",
        [f"uplink.bits={bits}", f"uplink.bucket={bucket}"],
    )
    for bits in (4, 3, 2)
    for bucket in (512, 4096)
}


def reproduce(out: Path, quick: bool = False) -> dict:
    steps = 10 if quick else 2000
    variants = dict(list(VARIANTS.items())[:2]) if quick else VARIANTS
    common = [
        "model.name=lenet",
        "data.name=fashion-mnist",
        "algorithm.lr=0.02",
        "algorithm.momentum=0.9",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
    ]
    results = {"settings": {"steps": steps, "workers": 4, "batch": 32, "tolerance": TOLERANCE}, "runs": []}
    for name, (base, sets) in variants.items():
        s = run(base, common + sets, 4)
        results["runs"].append(
            {
                "variant": name,
                "command": s["command"],
                "test_accuracy": s["final_test_accuracy"],
                "compression_up": s["compression_up"],
                "bytes_up_per_step_worker": s["bytes_up"] / steps / 4,
                "curves": {},
            }
        )
    base = results["runs"][0]["test_accuracy"]
    within = [r for r in results["runs"][1:] if r["test_accuracy"] >= base - TOLERANCE]
    results["largest_ratio_within_tolerance"] = max((r["compression_up"] for r in within), default=None)
    write_results(out, results, _table(results))
    _plot(results, out / "ecq-compression.png")
    return results


def _table(results: dict) -> list[str]:
    base = results["runs"][0]["test_accuracy"]
    lines = [
        "| variant | test accuracy | vs 32-bit SGD (points) | uplink compression "
        "| uplink bytes/step/worker |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.4f} | {100 * (r['test_accuracy'] - base):+.2f} | "
            f"{r['compression_up']:.1f}x | {r['bytes_up_per_step_worker']:.0f} |"
        )
    best = results["largest_ratio_within_tolerance"]
    lines += [
        "",
        f"Largest compression within 0.5 points of 32-bit SGD: {f'{best:.1f}x' if best else 'none'}",
    ]
    return lines


def _plot(results: dict, path: Path) -> None:
    plt, fig, axes = figure(1, 1)
    ax = axes[0, 0]
    base = results["runs"][0]["test_accuracy"]
    for r in results["runs"][1:]:
        ax.scatter(r["compression_up"], r["test_accuracy"], label=r["variant"])
    ax.axhline(base, color="k", linestyle=":", label="32-bit SGD")
    ax.axhline(base - TOLERANCE, color="r", linestyle="--", linewidth=1, label="0.5 points below")
    ax.set(
        title="ECQ-SGD on LeNet-5 / Fashion-MNIST: accuracy vs compression", xlabel="uplink compression (x)"
    )
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
