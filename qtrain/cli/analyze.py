"""``qtrain analyze TRACE`` and ``qtrain compare OUT_DIR...``."""

from __future__ import annotations

import csv
from pathlib import Path

import typer

from qtrain.io import strict_json


def analyze(
    trace: str = typer.Argument(..., help="OUT/trace.h5 of a finished or live run (or the run directory)."),
    plot: str = typer.Option(
        None, "--plot", help="Write a six-panel figure (PNG) here, with one step's timeline below (MPI runs)."
    ),
    timeline_step: int = typer.Option(
        None, "--timeline-step", help="The step the --plot timeline shows (default: the median one)."
    ),
    csv_path: str = typer.Option(None, "--csv", help="Write the per-step series as CSV here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    project: str = typer.Option(
        None,
        "--project",
        help="Predict the step time elsewhere: bandwidth=10gbit[,workers=64][,latency=0.1ms] "
        "(model: docs/benchmarks.md).",
    ),
    warmup: int = typer.Option(5, "--warmup", help="Steps the projection leaves out."),
) -> None:
    """Bytes per step and compression vs fp32, time per phase, stragglers, loss/accuracy/error over steps."""
    from qtrain.analysis.trace_report import format_report, per_step, report
    from qtrain.cli.errors import fail
    from qtrain.io.trace import read_metrics, read_timeline, read_trace

    path = Path(trace)
    if path.is_dir():
        path = path / "trace.h5"
    try:
        steps, evals, attrs = read_trace(path)
        rep = report(steps, evals, attrs)
    except ValueError as exc:
        fail(str(exc))
    if csv_path:
        series = per_step(steps)
        try:
            with open(csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(list(series))
                writer.writerows(zip(*[v.tolist() for v in series.values()], strict=True))
        except OSError as exc:
            fail(f"--csv: cannot write {csv_path!r} ({exc.strerror or exc})")
    if plot:
        from qtrain.analysis.plots import plot_trace

        timeline = read_timeline(path)
        if timeline_step is not None and not len(timeline["timeline_workers"]):
            fail(
                f"--timeline-step {timeline_step}: {path} has no timeline (simulator run or timeline_every=0)"
            )
        metrics = read_metrics(path)
        try:
            plot_trace(steps, evals, attrs, rep, plot, timeline, timeline_step, metrics)
        except ValueError as exc:  # the timeline step, or a file type matplotlib cannot write
            fail(f"--timeline-step: {exc}" if "has no timeline" in str(exc) else f"--plot {plot!r}: {exc}")
        except OSError as exc:
            fail(f"--plot: cannot write {plot!r} ({exc.strerror or exc})")
        if not len(metrics):  # said once the figure is written (a failed write says only why)
            typer.echo(
                "--plot: this run logged no session.log metrics (a script's own numbers get a panel)",
                err=True,
            )
    if project:
        from qtrain.analysis.projection import PerfModel, format_projection, parse_project

        try:
            model = PerfModel.from_trace(steps, attrs, warmup, evals)
            rep["projection"] = {
                "model": model.__dict__,
                "predicted": model.predict(**parse_project(project)),
            }
        except ValueError as exc:
            fail(str(exc))
    typer.echo(strict_json.dumps(rep, indent=2) if as_json else format_report(rep))
    if project and not as_json:
        typer.echo(format_projection(rep["projection"]))


def compare(
    runs: list[str] = typer.Argument(
        ..., help="Run directories (each with summary.json, trace.h5 if traced)."
    ),
    plot: str = typer.Option(None, "--plot", help="Write a side-by-side figure (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
    target: float = typer.Option(
        None, "--target", help="With --plot: a target loss, drawn as a dotted line on the loss panels."
    ),
) -> None:
    """Several runs side by side: accuracy, loss, bytes each way, compression, time."""
    from qtrain.cli.errors import fail
    from qtrain.io.summary_file import SummaryError, read_summary
    from qtrain.io.trace import read_metrics, read_trace

    if target is not None and not plot:
        fail("--target draws a line on the --plot figure: give --plot too")
    loaded = []
    for d in runs:
        p = Path(d)
        if not (p / "summary.json").exists():
            fail(f"{d}: no summary.json (not a finished qtrain run directory)")
        try:
            summary = read_summary(p / "summary.json")
        except SummaryError as exc:
            fail(str(exc))
        steps, metrics = None, None
        if (p / "trace.h5").is_file():
            try:
                steps = read_trace(p / "trace.h5")[0]
                metrics = read_metrics(p / "trace.h5")
            except ValueError as exc:
                fail(str(exc))
        loaded.append({"label": p.name, "summary": summary, "steps": steps, "metrics": metrics})
    rows = []
    for r in loaded:
        s = r["summary"]
        rows.append(
            {
                "run": r["label"],
                "algorithm": s["algorithm"],
                "uplink": s["uplink"]["codec"],
                "downlink": s["downlink"]["codec"],
                "workers": s["workers"],
                "steps": s["steps"],
                "test_accuracy": s.get("final_test_accuracy"),
                "test_loss": s["final_test_loss"],
                "bytes_up": s["bytes_up"],
                "bytes_down": s["bytes_down"],
                "compression_up": s["compression_up"],
                "compression_down": s["compression_down"],
                "wall_seconds": s["wall_seconds"],
            }
        )
    from qtrain.analysis.plots import compare_mismatches

    odd = compare_mismatches([r["summary"] for r in loaded])
    if odd:
        typer.echo(f"qtrain: warning: the runs differ in {'; '.join(odd)}", err=True)
    if plot:
        from qtrain.analysis.plots import plot_compare

        with_metrics = [r["label"] for r in loaded if r["metrics"] is not None and len(r["metrics"])]
        if with_metrics:
            for r in loaded:
                if r["label"] not in with_metrics:
                    typer.echo(f"--plot: {r['label']} logged no session.log metrics", err=True)
        plot_compare(loaded, plot, target)
    if as_json:
        typer.echo(strict_json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'run':<24}{'algorithm':<16}{'up':<10}{'down':<10}{'acc':>8}{'loss':>9}{'up MB':>9}"
        f"{'down MB':>9}{'up x':>7}{'down x':>7}{'wall s':>8}"
    )
    for r in rows:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        loss = f"{r['test_loss']:.4f}" if r["test_loss"] is not None else "-"
        typer.echo(
            f"{r['run']:<24}{r['algorithm']:<16}{r['uplink']:<10}{r['downlink']:<10}{acc:>8}"
            f"{loss:>9}{r['bytes_up'] / 1e6:>9.3f}{r['bytes_down'] / 1e6:>9.3f}"
            f"{r['compression_up']:>7.1f}{r['compression_down']:>7.1f}{r['wall_seconds']:>8.1f}"
        )
