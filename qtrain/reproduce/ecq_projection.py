"""ECQ-SGD's performance model (Wu et al., ICML 2018, Sec. 6): the projected speed-up of 2-bit
ECQ-SGD over 32-bit SGD for ResNet-50 from 8 to 512 workers on a 40 Gb/s network.

How: two measured runs, then qtrain's step-time model (``qtrain analyze --project``,
:mod:`qtrain.analysis.projection`) with its inputs scaled to ResNet-50.

1. Measure: 32-bit SGD (configs/sgd.yaml) and 2-bit ECQ-SGD (configs/ecq-sgd.yaml: uniform linf,
   bucket 512, error feedback) on the same MLP (``MEASURED_HIDDEN``, digits, batch 32 per worker),
   4 simulated workers, every step traced; :class:`PerfModel` reads each trace (warm-up left out).
2. Scale to ResNet-50 (``RESNET50_PARAMS`` parameters, ``RESNET50_MACS`` multiply-adds per 224x224
   image forward, He et al. 2016, Table 1), each part by what it is proportional to:
   - the codec and update times (worker encode and decode, the server's decode per uplink and its
     update + encode) and the bytes on the wire: by the parameter count;
   - the workers' forward/backward time (the mean of the two runs' measurements: it does not depend
     on the algorithm): by the multiply-adds per sample (the MLP's are its weight count), at the
     same batch. This is this 2-core CPU's speed; a GPU computes far faster, which
     makes the network matter more. The table therefore also shows a stated what-if compute time
     (``WHAT_IF_COMPUTE_S``, not a measurement) with everything else scaled as above.
3. Predict the step time of each at 40 Gb/s for 8 to 512 workers: one server rank, no overlap
   (the model of docs/benchmarks.md); speed-up = T(32-bit SGD) / T(ECQ-SGD).

The paper's own figure (its Sec. 6 performance model for ResNet-50 on 40 Gb/s) is not available
offline here (only its abstract is), so docs/reproductions.md cannot quote its number.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qtrain.analysis.projection import PerfModel
from qtrain.config import load_config
from qtrain.engine.simulator import simulate
from qtrain.io.trace import read_trace
from qtrain.reproduce.runs import CONFIGS, figure, write_results

RESNET50_PARAMS = 25_557_032  # torchvision's resnet50: 25.56 M weights
RESNET50_MACS = 3.8e9  # multiply-adds per 224x224 image, forward (He et al. 2016, Table 1)
MEASURED_HIDDEN = [2048, 2048]  # the measured MLP: 64 -> 2048 -> 2048 -> 10 on digits (4.3 M weights)
BANDWIDTH_BPS = 40e9
WORKERS = (8, 16, 32, 64, 128, 256, 512)
WHAT_IF_COMPUTE_S = 0.1  # a stated what-if compute time per step (GPU class), not a measurement
MEASURED_WORKERS = 4
ALGORITHMS = {"32-bit SGD": "sgd.yaml", "ECQ-SGD 2-bit": "ecq-sgd.yaml"}


def reproduce(out: Path, quick: bool = False) -> dict:
    steps = 8 if quick else 60
    warmup = 2 if quick else 10
    hidden = [64] if quick else MEASURED_HIDDEN
    sets = [
        f"model.hidden=[{','.join(map(str, hidden))}]",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        "runtime.threads=2",
    ]
    models, runs = {}, []
    for name, base in ALGORITHMS.items():
        run_dir = out / "runs" / base.removesuffix(".yaml")
        cfg = load_config(CONFIGS / base, sets)
        summary = simulate(cfg, MEASURED_WORKERS, run_dir, log=lambda _: None, overwrite=True)
        steps_table, evals, attrs = read_trace(run_dir / "trace.h5")
        models[name] = PerfModel.from_trace(steps_table, attrs, warmup, evals)
        runs.append(
            {
                "variant": name,
                "command": f"qtrain simulate configs/{base} --workers {MEASURED_WORKERS} "
                + " ".join(f"--set {s}" for s in sets)
                + f" --out {run_dir}",
                "parameters": summary["numel"],
                "model": models[name].__dict__,
                "curves": {},
            }
        )
    params = runs[0]["parameters"]
    param_scale = RESNET50_PARAMS / params
    compute_scale = RESNET50_MACS / _mlp_macs(hidden)
    # forward/backward does not depend on the algorithm: both use the mean of the two measurements
    compute_s = sum(m.compute_s for m in models.values()) / len(models)
    scaled = {
        name: _scale(replace(m, compute_s=compute_s), param_scale, compute_scale)
        for name, m in models.items()
    }
    what_if = {name: replace(m, compute_s=WHAT_IF_COMPUTE_S) for name, m in scaled.items()}
    results = {
        "settings": {
            "bandwidth_bps": BANDWIDTH_BPS,
            "measured_parameters": params,
            "resnet50_parameters": RESNET50_PARAMS,
            "parameter_scale": param_scale,
            "compute_scale": compute_scale,
            "measured_compute_s": compute_s,
            "what_if_compute_s": WHAT_IF_COMPUTE_S,
            "steps": steps,
            "warmup": warmup,
        },
        "runs": runs,
        "scaled": {name: m.__dict__ for name, m in scaled.items()},
        "projection": [],
    }
    for n in WORKERS:
        row = {"workers": n}
        for label, family in (("scaled", scaled), ("what_if", what_if)):
            t = {name: m.predict(BANDWIDTH_BPS, n)["step_s"] for name, m in family.items()}
            row[label] = {"sgd_step_s": t["32-bit SGD"], "ecq_step_s": t["ECQ-SGD 2-bit"]}
            row[label]["speedup"] = t["32-bit SGD"] / t["ECQ-SGD 2-bit"]
        row["parts_ecq_scaled"] = scaled["ECQ-SGD 2-bit"].predict(BANDWIDTH_BPS, n)["parts"]
        row["parts_sgd_scaled"] = scaled["32-bit SGD"].predict(BANDWIDTH_BPS, n)["parts"]
        results["projection"].append(row)
    write_results(out, results, _table(results))
    _plot(results, out / "ecq-projection.png")
    return results


def _mlp_macs(hidden: list[int], inputs: int = 64, outputs: int = 10) -> int:
    """Multiply-adds of one forward pass of the digits MLP (its weight count)."""
    widths = [inputs, *hidden, outputs]
    return sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def _scale(m: PerfModel, param_scale: float, compute_scale: float) -> PerfModel:
    return replace(
        m,
        compute_s=m.compute_s * compute_scale,
        worker_encode_s=m.worker_encode_s * param_scale,
        worker_decode_s=m.worker_decode_s * param_scale,
        server_decode_per_uplink_s=m.server_decode_per_uplink_s * param_scale,
        server_encode_s=m.server_encode_s * param_scale,
        up_bytes=m.up_bytes * param_scale,
        down_bytes=m.down_bytes * param_scale,
    )


def _table(results: dict) -> list[str]:
    s = results["settings"]
    lines = [
        f"Inputs measured on a {s['measured_parameters']:,}-parameter MLP, "
        f"scaled x{s['parameter_scale']:.1f} "
        f"(parameters) and x{s['compute_scale']:.0f} (compute) to ResNet-50; 40 Gb/s, one server rank.",
        "",
        "| workers | 32-bit SGD s/step | ECQ-SGD 2-bit s/step | speed-up | what-if: SGD s/step "
        f"| what-if: ECQ s/step | what-if speed-up (compute {s['what_if_compute_s']} s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["projection"]:
        a, b = r["scaled"], r["what_if"]
        lines.append(
            f"| {r['workers']} | {a['sgd_step_s']:.3f} | {a['ecq_step_s']:.3f} | {a['speedup']:.2f}x | "
            f"{b['sgd_step_s']:.3f} | {b['ecq_step_s']:.3f} | {b['speedup']:.2f}x |"
        )
    lines += ["", "Step parts at 512 workers (scaled, seconds):", ""]
    last = results["projection"][-1]
    lines += ["| part | 32-bit SGD | ECQ-SGD 2-bit |", "|---|---:|---:|"]
    for k in last["parts_sgd_scaled"]:
        lines.append(f"| {k} | {last['parts_sgd_scaled'][k]:.3f} | {last['parts_ecq_scaled'][k]:.3f} |")
    return lines


def _plot(results: dict, path: Path) -> None:
    plt, fig, axes = figure(1, 1)
    ax = axes[0, 0]
    n = [r["workers"] for r in results["projection"]]
    ax.plot(
        n, [r["scaled"]["speedup"] for r in results["projection"]], "o-", label="compute scaled from this CPU"
    )
    what_if = results["settings"]["what_if_compute_s"]
    ax.plot(
        n,
        [r["what_if"]["speedup"] for r in results["projection"]],
        "s--",
        label=f"what-if compute {what_if} s",
    )
    ax.axhline(1.0, color="k", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set(
        title="Projected: ResNet-50, 40 Gb/s, one server",
        xlabel="workers",
        ylabel="T(SGD) / T(ECQ-SGD)",
    )
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
