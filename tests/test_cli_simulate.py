import json
import subprocess
import sys

import numpy as np
import pytest


def qtrain(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "qtrain", *args], capture_output=True, text=True, timeout=timeout
    )


def test_simulate_writes_config_and_summary(tmp_path):
    out = tmp_path / "run"
    p = qtrain(
        "simulate", "configs/default.yaml", "--workers", "3", "--set", "train.steps=20", "--out", str(out)
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 3 and summary["steps"] == 20
    assert "workers: 3" in (out / "config.yaml").read_text()
    assert "test accuracy" in p.stdout and summary["params_sha256"][:16] in p.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (["simulate", "configs/default.yaml", "--set", "algorithm.name=foo"], "unknown algorithm 'foo'"),
        (["simulate", "configs/default.yaml", "--set", "data.name=npz"], "needs data.path"),
        (["simulate", "configs/default.yaml", "--workers", "0"], "--workers must be at least 1"),
        (
            ["simulate", "configs/default.yaml", "--set", "data.name=libsvm", "--set", "data.path=/no/such"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    p = qtrain(*args, "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qtrain: error:") and message in lines[0], p.stderr


def test_outputs_to_unwritable_paths_are_one_line(tmp_path):
    """checkpoint export to a directory and analyze --csv/--plot to a bad path once gave tracebacks."""
    out = tmp_path / "run"
    sets = ["--set", "train.steps=10", "--set", "checkpoint.every=10", "--quiet"]
    assert qtrain("simulate", "configs/sgd.yaml", "--out", str(out), *sets).returncode == 0
    ckpt = out / "checkpoints" / "step-0000010.h5"
    cases = [
        (["checkpoint", "export", str(ckpt), str(tmp_path)], "checkpoint export: cannot write"),
        (["checkpoint", "export", str(ckpt), str(tmp_path / "no" / "dir" / "m.pt")], "cannot write"),
        (["analyze", str(out), "--csv", str(tmp_path)], "--csv: cannot write"),
        (["analyze", str(out), "--plot", str(tmp_path / "no" / "dir" / "p.png")], "--plot: cannot write"),
        (["analyze", str(out), "--plot", str(tmp_path / "p.xyz")], "--plot"),
        (["compare", str(out), "--target", "2.0"], "--target draws a line on the --plot figure"),
    ]
    for args, message in cases:
        p = qtrain(*args)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode == 2 and "Traceback" not in p.stderr, (args, p.stderr[-1500:])
        assert len(lines) == 1 and lines[0].startswith("qtrain: error:") and message in lines[0], lines


def test_compare_plots_loss_and_accuracy_against_time_and_bytes_and_warns_of_unlike_runs(tmp_path):
    """The figure that answers "does compression pay": four labelled panels, a line per run with a
    trace; runs with other workers, models or data are compared with a warning."""
    from qtrain.analysis.plots import COMPARE_PANELS, plot_compare
    from qtrain.io.trace import read_trace

    runs = []
    for name, workers in (("sgd", 2), ("ecq-sgd", 2), ("ecq-sgd", 3)):
        out = tmp_path / f"{name}-{workers}"
        p = qtrain(
            "simulate",
            name,
            "-w",
            str(workers),
            "--set",
            "train.steps=20",
            "--set",
            "train.eval_every=10",
            "--out",
            str(out),
            "-q",
        )
        assert p.returncode == 0, p.stderr
        runs.append(
            {
                "label": out.name,
                "summary": json.loads((out / "summary.json").read_text()),
                "steps": read_trace(out / "trace.h5")[0],
            }
        )
    assert plot_compare(runs, str(tmp_path / "cmp.png")) == list(COMPARE_PANELS)
    # a script's session.log numbers get a row of their own, against time and bytes, per run
    from qtrain.analysis.plots import COMPARE_METRIC_PANELS, metric_series
    from qtrain.io.trace import METRIC_DTYPE

    logged = np.zeros(6, dtype=METRIC_DTYPE)
    logged["step"], logged["rank"] = [5, 5, 10, 10, 20, 20], [1, 2, 1, 2, 1, 2]
    logged["name"], logged["value"] = (
        [b"val_loss", b"val_loss", b"val_loss", b"val_loss", b"lr", b"lr"],
        [3, 5, 2, 2, 1, 1],
    )
    runs[0]["metrics"] = logged
    assert metric_series(logged)["val_loss"][1].tolist() == [4.0, 2.0]  # the mean over the ranks per step
    from unittest import mock

    import matplotlib.axes

    from qtrain.analysis.plots import run_legend

    with mock.patch.object(matplotlib.axes.Axes, "axhline", autospec=True) as line:
        drawn = plot_compare(runs, str(tmp_path / "cmp-metrics.png"), target=2.5)
    assert drawn == list(COMPARE_PANELS) + list(COMPARE_METRIC_PANELS)
    # the target on both training-loss panels, both test-loss-less accuracy panels skipped, both metric panels
    assert [c.args[0].get_title() for c in line.call_args_list] == [
        *COMPARE_METRIC_PANELS,
        *COMPARE_PANELS[:2],
    ] and {c.args[1] for c in line.call_args_list} == {2.5}
    up = runs[1]["summary"]["uplink"]["codec"]
    assert run_legend(runs[1]) == f"ecq-sgd-2 (ecq-sgd, {up}/{runs[1]['summary']['downlink']['codec']})"
    # and qtrain analyze's figure gets a panel of them below its six
    from qtrain.analysis.plots import METRICS_PANEL, PANEL_TITLES, plot_trace
    from qtrain.analysis.trace_report import report

    st, ev, attrs = read_trace(tmp_path / "sgd-2" / "trace.h5")
    drawn = plot_trace(st, ev, attrs, report(st, ev, attrs), str(tmp_path / "one.png"), metrics=logged)
    assert [t.split(" (")[0] for t in drawn] == [*PANEL_TITLES, METRICS_PANEL.split(" (")[0]]
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "cmp.png").shape[2] in (3, 4)
    same = qtrain("compare", str(tmp_path / "sgd-2"), str(tmp_path / "ecq-sgd-2"))
    assert same.returncode == 0 and "warning" not in same.stderr
    unlike = qtrain("compare", str(tmp_path / "sgd-2"), str(tmp_path / "ecq-sgd-3"))
    assert unlike.returncode == 0 and "qtrain: warning: the runs differ in workers (2, 3)" in unlike.stderr
