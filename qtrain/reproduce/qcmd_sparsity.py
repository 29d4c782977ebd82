"""QCMD/QRDA AdaGrad keep the model sparse (Xu et al., 2022: quantized composite mirror descent and
quantized regularized dual averaging with AdaGrad steps and an l1 regularizer).

Claim reproduced: with the l1 regularizer, the threshold quantizer (which sends only the
coordinates whose |g| reaches the bucket's mean |g|, at 2 bits) keeps the learned model as sparse
as full-precision gradients do, at the same accuracy, where coarser quantizers that send every
coordinate (uniform 2-bit, sign) leave more weights nonzero. Measured: the share of nonzero
weights of the linear model (bias excluded) and the test accuracy, for both algorithms, four
uplink codecs and several l1 strengths, on the synthetic sparse logistic problem (1,000
features, 5% of them in the true model) and on Fashion-MNIST (10 x 784 weights). Not from the
paper, chosen here: the synthetic problem's size, 4 workers, batch 32, AdaGrad lr 0.05, 1,000
steps, buckets of 512, no error feedback (the paper's quantizers have none).
"""

from __future__ import annotations

from pathlib import Path

from qtrain.reproduce.runs import Curve, figure, run, write_results

CODECS = {
    "threshold": ["uplink.codec=threshold"],
    "uniform 2-bit": ["uplink.codec=uniform", "uplink.bits=2", "uplink.rounding=stochastic"],
    "sign": ["uplink.codec=sign"],
    "full precision": ["uplink.codec=none"],
}
ALGORITHMS = ("qcmd-adagrad", "qrda-adagrad")
L1 = (0.0, 1e-3, 3e-3, 1e-2)
FEATURES, DENSITY = 1000, 0.05


PROBLEMS = {
    "synthetic": [
        "data.name=synthetic-sparse-logistic",
        f"data.features={FEATURES}",
        f"data.density={DENSITY}",
        "data.samples=10000",
    ],
    "fashion-mnist": ["data.name=fashion-mnist"],
}


def density(params, ds):
    """Share of nonzero weights of the linear model (the first classes x features entries)."""
    w = params[: ds.outputs * ds.x_train[0].numel()]
    return float((w != 0).float().mean())


def reproduce(out: Path, quick: bool = False) -> dict:
    steps = 30 if quick else 1000
    l1s = L1[::3] if quick else L1
    algorithms = ALGORITHMS[:1] if quick else ALGORITHMS
    problems = ["synthetic"] if quick else list(PROBLEMS)
    results = {
        "settings": {"steps": steps, "workers": 4, "features": FEATURES, "true_density": DENSITY},
        "runs": [],
    }
    for problem, algorithm, l1 in ((p, a, lam) for p in problems for a in algorithms for lam in l1s):
        for codec, sets in CODECS.items():
            common = [
                f"algorithm.name={algorithm}",
                f"algorithm.l1={l1}",
                "model.name=logreg",
                *PROBLEMS[problem],
                "uplink.bucket=512" if codec != "full precision" else "uplink.error_feedback=false",
                "uplink.error_feedback=false",
                f"train.steps={steps}",
                f"train.eval_every={steps}",
            ]
            curves = [Curve("density", density, max(steps // 20, 1))]
            s = run("qcmd-adagrad.yaml", common + sets, 4, curves)
            results["runs"].append(
                {
                    "problem": problem,
                    "algorithm": algorithm,
                    "l1": l1,
                    "codec": codec,
                    "command": s["command"],
                    "density": s["curves"]["density"]["values"][-1],
                    "test_accuracy": s["final_test_accuracy"],
                    "bytes_up_per_step_worker": s["bytes_up"] / steps / 4,
                    "curves": s["curves"],
                }
            )
    write_results(out, results, _table(results))
    _plot(results, out / "qcmd-sparsity.png")
    return results


def _table(results: dict) -> list[str]:
    lines = [
        "| problem | algorithm | l1 | uplink codec | nonzero weights | test accuracy "
        "| uplink bytes/step/worker |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['problem']} | {r['algorithm']} | {r['l1']:g} | {r['codec']} | {100 * r['density']:.1f}% | "
            f"{r['test_accuracy']:.4f} | {r['bytes_up_per_step_worker']:.0f} |"
        )
    return lines


def _plot(results: dict, path: Path) -> None:
    panels = sorted({(r["problem"], r["algorithm"]) for r in results["runs"]}, reverse=True)
    plt, fig, axes = figure(len(panels), 2)
    for j, (problem, algorithm) in enumerate(panels):
        for codec in CODECS:
            rows = [
                r
                for r in results["runs"]
                if (r["problem"], r["algorithm"], r["codec"]) == (problem, algorithm, codec)
            ]
            l1 = [max(r["l1"], 1e-4) for r in rows]  # l1 = 0 drawn at 1e-4 on the log axis
            axes[j, 0].plot(l1, [100 * r["density"] for r in rows], marker="o", label=codec)
            axes[j, 1].plot(l1, [r["test_accuracy"] for r in rows], marker="o", label=codec)
        where = f"{problem}, {algorithm}"
        axes[j, 0].set(title=f"{where}: nonzero weights", xlabel="l1 (0 at 1e-4)", ylabel="%", xscale="log")
        axes[j, 1].set(title=f"{where}: test accuracy", xlabel="l1 (0 at 1e-4)", xscale="log")
        if problem == "synthetic":
            axes[j, 0].axhline(100 * DENSITY, color="k", linestyle=":", linewidth=1, label="true model")
        axes[j, 0].legend(fontsize=8)
    fig.suptitle(
        f"Linear models with l1: synthetic sparse logistic ({FEATURES} features, {100 * DENSITY:g}% in the "
        "true model) and Fashion-MNIST"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
