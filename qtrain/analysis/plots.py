"""Report figures (matplotlib, headless)."""

from __future__ import annotations

import numpy as np

from qtrain.analysis.trace_report import WORKER_PHASES, per_step

PANEL_TITLES = (
    "Training loss",
    "Test accuracy",
    "Bytes per step",
    "Worker time per step",
    "Relative compression error",
    "Busy time per worker",
)


def _figure(rows: int, cols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), constrained_layout=True)


def plot_trace(steps: np.ndarray, evals: np.ndarray, attrs: dict, report: dict, path: str) -> list[str]:
    """Six panels; returns the titles of the axes actually drawn (read back from the figure)."""
    plt, (fig, axes) = _figure(2, 3)
    s = per_step(steps)
    ax = axes[0, 0]
    ax.plot(s["step"], s["loss"])
    ax.set(title=PANEL_TITLES[0], xlabel="step", ylabel="mean batch loss")
    ax = axes[0, 1]
    if len(evals) and not np.all(np.isnan(evals["test_accuracy"])):
        ax.plot(evals["step"], evals["test_accuracy"], marker="o")
        ax.set(ylabel="accuracy")
    elif len(evals):
        ax.plot(evals["step"], evals["test_loss"], marker="o")
        ax.set(ylabel="test loss")
    ax.set(title=PANEL_TITLES[1], xlabel="step")
    ax = axes[0, 2]
    ax.plot(s["step"], s["bytes_up"], label="uplink (all workers)")
    ax.plot(s["step"], s["bytes_down"], label="downlink (all workers)")
    ax.axhline(report["fp32_bytes_per_step_each_way"], color="gray", linestyle="--", label="fp32, each way")
    ax.set(title=PANEL_TITLES[2], xlabel="step", ylabel="bytes", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    times = report["worker_seconds_per_step"]
    ax.bar([p[:-2] for p in WORKER_PHASES], [1e3 * times[p] for p in WORKER_PHASES])
    share = report["communication_share"]
    ax.set(title=PANEL_TITLES[3] + (f" (comm {100 * share:.0f}%)" if share is not None else ""), ylabel="ms")
    ax = axes[1, 1]
    ax.plot(s["step"], s["up_rel_error"], label="uplink")
    ax.plot(s["step"], s["down_rel_error"], label="downlink")
    ax.set(title=PANEL_TITLES[4], xlabel="step", ylabel="||Q(v)-v|| / ||v||")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    ranks = sorted(report["worker_busy_seconds_per_step"])
    busy = [1e3 * report["worker_busy_seconds_per_step"][r] for r in ranks]
    colors = ["tab:red" if r in report["stragglers"] else "tab:blue" for r in ranks]
    ax.bar([str(r) for r in ranks], busy, color=colors)
    ax.set(title=PANEL_TITLES[5], xlabel="rank", ylabel="compute + encode, ms")
    fig.suptitle(f"{attrs.get('algorithm')}: {attrs.get('workers')} workers")
    fig.savefig(path, dpi=110)
    titles = [a.get_title() for a in fig.get_axes() if a.has_data()]
    plt.close(fig)
    return titles


def plot_compare(runs: list[dict], path: str) -> list[str]:
    """Runs side by side: loss, test accuracy, bytes per step each way."""
    plt, (fig, axes) = _figure(1, 3)
    titles = ["Training loss", "Test accuracy", "Bytes per step"]
    for run in runs:
        s = per_step(run["steps"]) if run["steps"] is not None else None
        if s is not None:
            axes[0].plot(s["step"], s["loss"], label=run["label"])
        ev = run["summary"].get("evals", [])
        if ev and "test_accuracy" in ev[0]:
            axes[1].plot(
                [e["step"] for e in ev], [e["test_accuracy"] for e in ev], marker="o", label=run["label"]
            )
    labels = [r["label"] for r in runs]
    x = np.arange(len(runs))
    steps = [max(r["summary"]["steps"], 1) for r in runs]
    axes[2].bar(
        x - 0.2, [r["summary"]["bytes_up"] / n for r, n in zip(runs, steps, strict=True)], 0.4, label="uplink"
    )
    axes[2].bar(
        x + 0.2,
        [r["summary"]["bytes_down"] / n for r, n in zip(runs, steps, strict=True)],
        0.4,
        label="downlink",
    )
    axes[2].set_xticks(x, labels, rotation=20, fontsize=8)
    axes[2].set(yscale="log", ylabel="bytes (all workers)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set(xlabel="step")
    axes[1].set(xlabel="step")
    fig.savefig(path, dpi=110)
    drawn = [a.get_title() for a in fig.get_axes() if a.has_data()]
    plt.close(fig)
    return drawn


BENCH_PANELS = ("Seconds per step, split by phase", "Test accuracy against wall-clock time")
# qtrain's worker-side phases in the order a step runs them (their sum is the worker's step time)
BENCH_PHASES = ("worker_compute_s", "worker_encode_s", "worker_comm_s", "worker_decode_s")


def plot_bench_network(results: dict, path: str) -> list[str]:
    """Two panels of a `qtrain bench network` comparison: each run's median step time, qtrain's
    split into its worker phases (DDP peers as one bar: their communication overlaps backward),
    and accuracy against wall-clock time. Returns the axes titles drawn."""
    plt, (fig, axes) = _figure(1, 2)
    bars, curves = axes
    names = [r["name"] for r in results["runs"]]
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for phase in BENCH_PHASES:
        heights = np.array([r["phases_s"].get(phase, 0.0) for r in results["runs"]])
        if heights.any():
            bars.bar(x, heights, bottom=bottom, label=phase.removeprefix("worker_").removesuffix("_s"))
            bottom += heights
    rest = np.array([r["seconds_per_step"]["median_s"] for r in results["runs"]]) - bottom
    bars.bar(x, np.clip(rest, 0, None), bottom=bottom, label="other / total (DDP)", color="0.7")
    bars.set_xticks(x, names, rotation=30, ha="right")
    bars.set_ylabel("seconds per step (median)")
    bars.legend(fontsize=8)
    link = results["link"]
    bars.set_title(BENCH_PANELS[0])
    for r in results["runs"]:
        ev = [e for e in r["evals"] if "test_accuracy" in e]
        if ev:
            curves.plot(
                [e["wall_s"] for e in ev], [e["test_accuracy"] for e in ev], marker="o", label=r["name"]
            )
    if results.get("target_accuracy") is not None:
        curves.axhline(results["target_accuracy"], color="k", linestyle=":", linewidth=1, label="target")
    curves.set_xlabel("wall-clock seconds")
    curves.set_ylabel("test accuracy")
    curves.legend(fontsize=8)
    curves.set_title(BENCH_PANELS[1])
    fig.suptitle(
        f"{link['rate_bps'] / 1e9:g} Gbit/s links, {results['workers']} workers, {results['cores']} cores"
    )
    fig.savefig(path, dpi=110)
    titles = [ax.get_title() for ax in axes]
    plt.close(fig)
    return titles
