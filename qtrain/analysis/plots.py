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


def plot_trace(
    steps: np.ndarray,
    evals: np.ndarray,
    attrs: dict,
    report: dict,
    path: str,
    timeline: dict | None = None,
    timeline_step: int | None = None,
    metrics: np.ndarray | None = None,
) -> list[str]:
    """Six panels; below them, when the run's script logged numbers with ``session.log``
    (``metrics``, io.trace.read_metrics), one panel of them against the step, each name in the
    legend; and below, one step's timeline when ``timeline`` (io.trace.read_timeline) has rows.
    Returns the titles of the axes actually drawn (read back from the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_timeline = timeline is not None and len(timeline["timeline_workers"]) > 0
    logged = metric_series(metrics)
    rows = 2 + bool(logged) + has_timeline
    fig = plt.figure(figsize=(15, 3.6 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 3)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(2)])
    if logged:
        ax = fig.add_subplot(grid[2, :])
        _plot_metrics(ax, logged)
        ax.set(title=METRICS_PANEL, xlabel="step", ylabel="value (mean over the ranks that logged it)")
        ax.legend(fontsize=8)
    if has_timeline:
        owners = attrs.get("segment_owners")
        plot_timeline(fig.add_subplot(grid[rows - 1, :]), timeline, timeline_step, owners)
    s = per_step(steps)
    ax = axes[0, 0]
    ax.plot(s["step"], s["loss"])
    if not np.isfinite(s["loss"]).any():  # a library loop that reported no loss to qtrain
        ax.text(
            0.5,
            0.5,
            "no loss reported\n(optimizer.backward(loss) puts it here)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set(title=PANEL_TITLES[0], xlabel="step", ylabel="mean batch loss")
    ax = axes[0, 1]
    if len(evals) and not np.all(np.isnan(evals["test_accuracy"])):
        ax.plot(evals["step"], evals["test_accuracy"], marker="o")
        ax.set(ylabel="accuracy")
    elif len(evals):
        ax.plot(evals["step"], evals["test_loss"], marker="o")
        ax.set(ylabel="test loss")
    else:  # a library run whose server evaluates nothing (no serve(evaluate=...)), or eval_every 0
        where = "its session.log metrics are below" if logged else "and no session.log metrics"
        ax.text(
            0.5,
            0.5,
            f"no evaluations in this run ({where})",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set(title=PANEL_TITLES[1], xlabel="step")
    ax = axes[0, 2]
    # lines that coincide stay visible: fp32 as a wide band behind, the uplink solid and wide, the
    # downlink dashed on top of it (1-bit both ways: equal; fp32 downlink: on the band)
    ax.axhline(
        report["fp32_bytes_per_step_each_way"], color="gray", linewidth=7, alpha=0.3, label="fp32, each way"
    )
    ax.plot(s["step"], s["bytes_up"], linewidth=3, label="uplink (all workers)")
    ax.plot(s["step"], s["bytes_down"], linewidth=1.5, linestyle="--", label="downlink (all workers)")
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
    serving = len(attrs.get("server_ranks") or [0])
    layout = (
        "each also serving its shard (co-located)"
        if attrs.get("colocated")
        else f"{serving} serving rank{'s' if serving != 1 else ''}"
    )
    fig.suptitle(f"{attrs.get('algorithm')}: {attrs.get('workers')} workers, {layout}")
    fig.savefig(path, dpi=110)
    titles = [a.get_title() for a in fig.get_axes() if a.has_data()]
    plt.close(fig)
    return titles


METRICS_PANEL = "Metrics the script logged (session.log)"
COMPARE_METRIC_PANELS = ("Logged metrics against wall-clock time", "Logged metrics against bytes sent")


def metric_series(metrics: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each ``session.log`` name's (steps, values): the mean over the ranks that logged it at
    that step, in step order (io.trace.read_metrics rows)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if metrics is None or not len(metrics):
        return out
    for raw in sorted(set(metrics["name"].tolist())):
        rows = metrics[metrics["name"] == raw]
        steps = np.unique(rows["step"])
        means = np.array([rows["value"][rows["step"] == s].mean() for s in steps])
        out[raw.decode("utf-8", "replace")] = (steps.astype(np.float64), means)
    return out


def _plot_metrics(ax, series: dict, x_of=None, prefix: str = "") -> None:
    for name, (steps, values) in series.items():
        x = steps if x_of is None else x_of(steps)
        ax.plot(x, values, marker="." if len(steps) < 50 else None, label=f"{prefix}{name}")


COMPARE_PANELS = (
    "Training loss against wall-clock time",
    "Training loss against bytes sent",
    "Test accuracy against wall-clock time",
    "Test accuracy against bytes sent",
)


def run_legend(run: dict) -> str:
    """A run's legend entry: its directory, algorithm and codecs (``adam-4bit (adam, uniform/uniform)``)."""
    s = run["summary"]
    return f"{run['label']} ({s['algorithm']}, {s['uplink']['codec']}/{s['downlink']['codec']})"


def plot_compare(runs: list[dict], path: str, target: float | None = None) -> list[str]:
    """Does compression pay? Each run's training loss and test accuracy (test loss where there is
    no accuracy) against wall-clock time and against the bytes sent both ways by all workers, on
    linear axes; when any run's script logged numbers with ``session.log`` (a run's ``metrics``),
    a third row draws them the same two ways, labelled "run: name". Runs without a trace have no
    curves. The legend names each run's algorithm and codecs; ``target`` (a loss) is a dotted line
    on every loss panel and the logged metrics' panels. Returns the titles of the panels drawn."""
    logged = {id(r): metric_series(r.get("metrics")) for r in runs}
    any_logged = any(logged.values())
    plt, (fig, axes) = _figure(3 if any_logged else 2, 2)
    accuracy = all(
        "test_accuracy" in (r["summary"].get("evals") or [{}])[0] for r in runs if r["summary"].get("evals")
    )
    metric, ylabel = ("test_accuracy", "test accuracy") if accuracy else ("test_loss", "test loss")
    for run in runs:
        if run["steps"] is None:
            continue
        label = run_legend(run)
        s = per_step(run["steps"])
        sent = np.cumsum(s["bytes_up"] + s["bytes_down"]) / 1e6
        if np.isfinite(s["loss"]).any():  # a library loop may report no loss to qtrain
            axes[0, 0].plot(s["wall_s"], s["loss"], label=label)
            axes[0, 1].plot(sent, s["loss"], label=label)
        ev = [e for e in run["summary"].get("evals", []) if metric in e]
        if ev:
            at = np.array([e["step"] for e in ev], dtype=np.float64)
            values = [e[metric] for e in ev]
            axes[1, 0].plot(np.interp(at, s["step"], s["wall_s"]), values, marker="o", label=label)
            axes[1, 1].plot(np.interp(at, s["step"], sent), values, marker="o", label=label)
        if logged[id(run)]:
            prefix = f"{label}: "
            _plot_metrics(
                axes[2, 0], logged[id(run)], lambda at, s=s: np.interp(at, s["step"], s["wall_s"]), prefix
            )
            _plot_metrics(
                axes[2, 1], logged[id(run)], lambda at, s=s, sent=sent: np.interp(at, s["step"], sent), prefix
            )
    if any_logged:
        for ax, title, x in zip(
            axes[2],
            COMPARE_METRIC_PANELS,
            ("wall-clock seconds", "MB sent (uplink + downlink, all workers)"),
            strict=True,
        ):
            ax.set(title=title, xlabel=x, ylabel="logged value (mean over ranks)")
            if ax.has_data() and target is not None:
                ax.axhline(target, color="k", linestyle=":", linewidth=1, label=f"target {target:g}")
            if ax.has_data():
                ax.legend(fontsize=8)
    for ax, title, x, y in zip(
        axes[:2].ravel(),
        COMPARE_PANELS,
        ("wall-clock seconds", "MB sent (uplink + downlink, all workers)") * 2,
        ("mean batch loss", "mean batch loss", ylabel, ylabel),
        strict=True,
    ):
        ax.set(title=title if accuracy or "accuracy" not in title else title.replace("accuracy", "loss"))
        ax.set(xlabel=x, ylabel=y)
        if ax.has_data() and target is not None and "accuracy" not in y:
            ax.axhline(target, color="k", linestyle=":", linewidth=1, label=f"target {target:g}")
        if ax.has_data():
            ax.legend(fontsize=8)
        else:  # say why it is empty rather than draw blank axes
            why = "no run reported a training loss" if "Training" in title else "no run has evaluations"
            if any_logged:
                why += "\n(the logged metrics are below)"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)
    drawn = [a.get_title() for a in fig.get_axes() if a.has_data()]
    plt.close(fig)
    return drawn


def compare_mismatches(summaries: list[dict]) -> list[str]:
    """What differs between runs that a comparison of their curves assumes equal: workers, model,
    dataset."""
    out = []
    for key in ("workers", "model", "dataset"):
        values = [s.get(key) for s in summaries]
        if len({str(v) for v in values}) > 1:
            out.append(f"{key} ({', '.join(map(str, values))})")
    return out


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
        ("unshaped links" if link["rate_bps"] is None else f"{link['rate_bps'] / 1e9:g} Gbit/s links")
        + f", {results['workers']} workers"
        + (", qtrain's shards co-located" if results.get("servers") == "colocated" else "")
        + f", {results['cores']} cores"
    )
    fig.savefig(path, dpi=110)
    titles = [ax.get_title() for ax in axes]
    plt.close(fig)
    return titles


TIMELINE_TITLE = "Timeline of step"
# (label, colour) of each bar kind of the timeline
TIMELINE_BARS = {
    "compute": ("forward + backward", "0.75"),
    "encode": ("worker rule + encode", "tab:orange"),
    "flight": ("uplink in flight / waiting", "tab:cyan"),
    "aggregate": ("server decode + average", "tab:purple"),
    "server": ("server rule + encode", "tab:red"),
    "broadcast": ("downlink broadcast", "tab:blue"),
    "apply": ("downlink decode + apply", "tab:green"),
}


def timeline_step_choice(timeline: dict) -> int:
    """The recorded step whose server span (first uplink in to last broadcast done) is the median."""
    server = timeline["timeline_server"]
    steps = np.unique(server["step"])
    spans = np.array([server["done_s"][server["step"] == t].max() for t in steps])
    return int(steps[np.argsort(spans)[len(spans) // 2]])


def plot_timeline(ax, timeline: dict, step: int | None = None, owners: list | None = None) -> int:
    """One step of the trace's timeline as a Gantt chart: a lane per serving rank (``owners``:
    the trace's ``segment_owners``, each segment's serving rank; None: one server) and one per
    worker, a bar per segment and phase, labelled with the segment index where it fits. Returns
    the step drawn."""
    server, workers = timeline["timeline_server"], timeline["timeline_workers"]
    recorded = np.intersect1d(server["step"], workers["step"])
    if step is None:
        step = timeline_step_choice({"timeline_server": server[np.isin(server["step"], recorded)]})
    elif step not in recorded:
        raise ValueError(f"step {step} has no timeline in this trace (recorded: {_span(recorded)})")
    s, w = server[server["step"] == step], workers[workers["step"] == step]
    ranks = sorted(set(w["rank"].tolist()))
    serving = sorted(set(owners)) if owners else []
    if len(serving) > 1:
        lanes = {("server", r): i for i, r in enumerate(serving)}
        lane_of = {k: ("server", r) for k, r in enumerate(owners)}
        names = [f"server rank {r}" for r in serving]
    else:
        lanes, lane_of, names = {("server", 0): 0}, {}, ["server"]
    lanes.update({r: len(names) + i for i, r in enumerate(ranks)})
    used = set()

    def bar(lane, start, end, kind, label=None, y_off=0.0, height=0.36):
        if not end > start:
            return
        used.add(kind)
        ax.barh(lanes[lane] + y_off, end - start, left=start, height=height, color=TIMELINE_BARS[kind][1])
        if label is not None:
            ax.text((start + end) / 2, lanes[lane] + y_off, label, ha="center", va="center", fontsize=6)

    for r in s:
        k = str(int(r["segment"]))
        lane = lane_of.get(int(r["segment"]), ("server", 0))
        bar(lane, r["uplinks_in_s"], r["aggregated_s"], "aggregate", k)
        bar(lane, r["aggregated_s"], r["encoded_s"], "server", k)
        bar(lane, r["posted_s"], r["done_s"], "broadcast", k, y_off=0.4, height=0.2)
    for r in w:
        rank, k = int(r["rank"]), str(int(r["segment"]))
        bar(rank, r["start_s"], r["backward_end_s"], "compute", y_off=-0.2, height=0.3)
        bar(rank, r["encode_start_s"], r["posted_s"], "encode", k, y_off=0.15, height=0.3)
        arrived_at_server = s["uplinks_in_s"][s["segment"] == r["segment"]]
        if len(arrived_at_server):
            bar(rank, r["posted_s"], arrived_at_server[0], "flight", y_off=0.38, height=0.08)
        bar(rank, r["arrived_s"], r["applied_s"], "apply", k, y_off=0.15, height=0.3)
    ax.set_yticks(list(lanes.values()), names + [f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the (lead) server began the step, on its clock")
    handles = [_legend_patch(TIMELINE_BARS[k]) for k in TIMELINE_BARS if k in used]
    ax.legend(handles=handles, fontsize=7, ncol=len(handles), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(f"{TIMELINE_TITLE} {step} (segment index on the bars)")
    return step


def _legend_patch(entry):
    from matplotlib.patches import Patch

    label, colour = entry
    return Patch(color=colour, label=label)


def _span(steps) -> str:
    steps = list(map(int, steps))
    return "none" if not steps else f"{len(steps)} steps, {steps[0]}..{steps[-1]}"


SCRIPT_BENCH_PANELS = (
    "Validation loss against wall-clock time",
    "Validation loss against bytes through the busiest link",
    "Seconds per step (median)",
)


def plot_bench_script(results: dict, path: str) -> list[str]:
    """Does compression pay on the user's script? Each run's validation loss against wall-clock
    seconds (from the end of step 1) and against the MB its busiest link carried, with the target
    as a dotted line, and each run's median step time, the seconds its bytes need on the shaped
    link marked. A `qtrain bench network --script` figure. Returns the titles drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), layout="constrained")
    clock, data, bars = axes
    for r in results["runs"]:
        ev = r["evals"]
        style = {"marker": "o", "markersize": 3, "linestyle": "--" if r["kind"] == "ddp" else "-"}
        clock.plot(
            [e["wall_s"] for e in ev], [e["loss"] for e in ev], label=f"{r['name']}: {r['label']}", **style
        )
        if all(e.get("bytes") for e in ev):  # counted on a link, and above zero: a log axis
            data.plot([e["bytes"] / 1e6 for e in ev], [e["loss"] for e in ev], **style)
    target = results.get("target")
    for ax, x in (
        (clock, "wall-clock seconds since the end of step 1"),
        (data, "MB through the busiest link"),
    ):
        if target is not None:
            line = ax.axhline(target, color="k", linestyle=":", linewidth=1)
        ax.set(xlabel=x, ylabel="validation loss")
    if data.has_data():
        data.set_xscale("log")
    handles, labels = clock.get_legend_handles_labels()
    if target is not None:
        handles.append(line)
        labels.append(f"target {target:.4f} ({results.get('target_from', '--target')})")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    names = [r["name"] for r in results["runs"]]
    x = np.arange(len(names))
    bars.bar(x, [r["seconds_per_step"]["median_s"] for r in results["runs"]], color="0.6", label="measured")
    rate = results["link"]["rate_bps"]
    if rate is not None:
        need = [8 * max(r["bytes_per_step_busiest_link"].values()) / rate for r in results["runs"]]
        bars.scatter(
            x, need, marker="_", s=400, color="tab:red", label="its bytes at the link rate", zorder=3
        )
    bars.set_xticks(x, names, rotation=30, ha="right")
    bars.set_ylabel("seconds per step")
    bars.legend(fontsize=7)
    for ax, title in zip(axes, SCRIPT_BENCH_PANELS, strict=True):
        ax.set_title(title, fontsize=10)
    link = "unshaped links" if rate is None else f"{rate / 1e6:g} Mbit/s per-rank links"
    layout = ", qtrain's shards co-located" if results.get("servers") == "colocated" else ""
    fig.suptitle(
        f"{results['script']}: {link}, {results['workers']} workers{layout}, {results['cores']} cores"
    )
    fig.savefig(path, dpi=110)
    titles = [ax.get_title() for ax in axes if ax.has_data()]
    plt.close(fig)
    return titles
