"""Quantized Adam with error feedback (Chen, Shen, Huang, Liu, "Quantized Adam with Error
Feedback", ACM TIST 2021).

Claims reproduced: (1) with gradients quantized to 1 or 2 bits, error feedback brings quantized
Adam to the loss of full-precision Adam, where the same quantizer without it converges worse;
(2) with the server's weights quantized (workers compute at quantized weights), training
converges to a neighbourhood whose size shrinks as the weights get more bits. Setting, chosen
here (not the paper's): linear regression on Syn-256 (ECQ-SGD's synthetic problem: convex, with
its exact least-squares optimum known, so a loss floor is unambiguous), 4 workers, batch 32 each,
2,000 steps, lr 0.01; 1 bit = `sign` (one scale per 512), 2 bits = `uniform` 2-bit linf
stochastic; weight quantization = `uniform` linf nearest at 4, 6 and 8 bits (buckets of 512)
with the default 2-bit gradients and error feedback. The training loss reported is that of the
server's full-precision master weights over the whole training set. (A first try on
Fashion-MNIST logistic regression, 3,000 steps, lr 0.002, showed no floor: full-precision Adam
itself had not converged, 0.432 against 0.398-0.417 for every quantized variant.)
"""

from __future__ import annotations

from pathlib import Path

from qtrain.reproduce.runs import figure, run, write_results

SIGN = [
    "uplink.codec=sign",
    "uplink.bucket=512",
    "uplink.bits=null",
    "uplink.norm=null",
    "uplink.rounding=null",
]
TWO_BIT = ["uplink.codec=uniform", "uplink.bits=2", "uplink.norm=linf", "uplink.rounding=stochastic"]
GRADIENT = {
    "Adam, fp32": ("adam.yaml", []),
    "1-bit, EF": ("qadam.yaml", [*SIGN, "uplink.error_feedback=true"]),
    "1-bit, no EF": ("qadam.yaml", [*SIGN, "uplink.error_feedback=false"]),
    "2-bit, EF": ("qadam.yaml", [*TWO_BIT, "uplink.error_feedback=true"]),
    "2-bit, no EF": ("qadam.yaml", [*TWO_BIT, "uplink.error_feedback=false"]),
}
WEIGHT_BITS = (4, 6, 8)


def _weights(bits: int) -> list[str]:
    return [
        "algorithm.weight_quantization=true",
        "downlink.codec=uniform",
        f"downlink.bits={bits}",
        "downlink.norm=linf",
        "downlink.rounding=nearest",
        "downlink.bucket=512",
    ]


def reproduce(out: Path, quick: bool = False) -> dict:
    steps = 20 if quick else 2000
    common = [
        "model.name=logreg",
        "data.name=synthetic-regression",
        "data.features=256",
        "data.samples=10000",
        "algorithm.lr=0.01",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
    ]
    variants = dict(GRADIENT)
    variants |= {f"weights {b}-bit (2-bit gradients, EF)": ("qadam.yaml", _weights(b)) for b in WEIGHT_BITS}
    results = {"settings": {"steps": steps, "workers": 4, "batch": 32, "model": "logreg"}, "runs": []}
    for name, (base, sets) in variants.items():
        s = run(base, common + sets, 4)
        results["runs"].append(
            {
                "variant": name,
                "weight_bits": next((b for b in WEIGHT_BITS if name.startswith(f"weights {b}-")), None),
                "command": s["command"],
                "train_loss": s["final_train_loss"],
                "optimum_train_loss": s["optimum_train_loss"],
                "test_loss": s["final_test_loss"],
                "bytes_up_per_step_worker": s["bytes_up"] / steps / 4,
                "bytes_down_per_step_worker": s["bytes_down"] / steps / 4,
                "curves": {},
            }
        )
    write_results(out, results, _table(results))
    _plot(results, out / "qadam.png")
    return results


def _table(results: dict) -> list[str]:
    lines = [
        "| variant | final training loss | optimum (least squares) | test loss | uplink bytes/step/worker "
        "| downlink bytes/step/worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['variant']} | {r['train_loss']:.5f} | {r['optimum_train_loss']:.5f} "
            f"| {r['test_loss']:.5f} | "
            f"{r['bytes_up_per_step_worker']:.0f} | {r['bytes_down_per_step_worker']:.0f} |"
        )
    return lines


def _plot(results: dict, path: Path) -> None:
    plt, fig, axes = figure(1, 2)
    grad = [r for r in results["runs"] if r["weight_bits"] is None]
    axes[0, 0].bar([r["variant"] for r in grad], [r["train_loss"] for r in grad])
    axes[0, 0].set(title="Gradient quantization: final training loss", ylabel="loss")
    axes[0, 0].tick_params(axis="x", rotation=30)
    weights = [r for r in results["runs"] if r["weight_bits"] is not None]
    axes[0, 1].plot([r["weight_bits"] for r in weights], [r["train_loss"] for r in weights], marker="o")
    axes[0, 1].axhline(grad[0]["train_loss"], color="k", linestyle=":", label="Adam, fp32")
    axes[0, 1].axhline(grad[0]["optimum_train_loss"], color="g", linestyle="--", label="optimum")
    axes[0, 0].set_yscale("log")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set(title="Weight quantization: loss floor vs bits", xlabel="weight bits", ylabel="loss")
    axes[0, 1].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
