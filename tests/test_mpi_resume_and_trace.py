"""Checkpoints, resume and traces of real MPI runs."""

import collections
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import SUMMARY_KEYS
from mpi_helpers import QTRAIN, mpi_train, simulate, summary, train_command
from test_resume_in_process import _continue_from

from qtrain.config import load_config
from qtrain.io.trace import read_timeline, read_trace

pytestmark = pytest.mark.mpi

# make test resumes qrda-adagrad here (a weights-mode downlink), qadam (a fused local Adam worker)
# in the learning-rate-drop resume below and efficient-adam (a stateful server rule, two-way error
# feedback) in test_mpi_servers.py's resume with another K and cut; make soak all seven here;
# every algorithm's state survives a checkpoint file in test_resume_in_process.py, and
# test_mpi_train.py compares every algorithm's MPI run with the simulator
ALGORITHMS = [
    pytest.param(name, marks=[] if name == "qrda-adagrad" else [pytest.mark.soak])
    for name in ("sgd", "adam", "ecq-sgd", "qadam", "efficient-adam", "qcmd-adagrad", "qrda-adagrad")
]
N = 8


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_resumed_under_mpiexec_equals_the_uninterrupted_simulator(tmp_path, name):
    """One comparison for two properties (each launch costs seconds): a run of mpiexec -n 3 that
    stops at a checkpoint and resumes must end bit-identical, in weights and bytes, to the
    simulator's uninterrupted run; steps 1..N under MPI and the resumed N+1..2N both have to match."""
    cfg = f"configs/{name}.yaml"
    sets = ("train.eval_every=5", "trace.timeline_every=3")
    first = mpi_train(3, cfg, tmp_path / "split", f"train.steps={N}", *sets)
    assert first.returncode == 0, first.stdout + first.stderr
    second = mpi_train(3, cfg, tmp_path / "split", f"train.steps={2 * N}", *sets, extra=("--resume", "auto"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert (
        f"resuming from {tmp_path / 'split' / 'checkpoints' / 'step-0000008.h5'} at step {N}" in second.stdout
    )
    got = summary(tmp_path / "split")
    for key in SUMMARY_KEYS:
        assert key in got
    assert got["algorithm"] == name and got["workers"] == 2 and got["runner"] == "mpi"
    assert got["backend"] == "mpi"
    ref = simulate(cfg, 2, tmp_path / "sim", f"train.steps={2 * N}", *sets)
    assert got["params_sha256"] == ref["params_sha256"]
    assert (got["bytes_up"], got["bytes_down"], got["steps"]) == (ref["bytes_up"], ref["bytes_down"], 2 * N)
    assert (tmp_path / "split" / "logs" / "rank-0.log").exists()
    assert (tmp_path / "split" / "logs" / "rank-2.log").exists()
    # the resumed trace continues the first one: one row per step per rank, no gaps or repeats
    with h5py.File(tmp_path / "split" / "trace.h5", "r") as f:
        steps = f["steps"][()]
    assert sorted(steps["step"][steps["rank"] == 1].tolist()) == list(range(1, 2 * N + 1))
    # and so does its timeline: every third step, each (step, rank, segment) once
    timeline = read_timeline(tmp_path / "split" / "trace.h5")
    w = timeline["timeline_workers"]
    keys = sorted(zip(w["step"].tolist(), w["rank"].tolist(), w["segment"].tolist(), strict=True))
    assert sorted(timeline["timeline_server"]["step"].tolist()) == [3, 6, 9, 12, 15]
    assert keys == [(t, r, 0) for t in (3, 6, 9, 12, 15) for r in (1, 2)]


def _run_until_checkpoint_then_kill(out, total, every, seed):
    cmd = train_command(
        3,
        "configs/efficient-adam.yaml",
        out,
        f"train.steps={total}",
        f"checkpoint.every={every}",
        "trace.flush_every=3",
        "train.log_every=1",
        "trace.csv=true",
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    kill_at = random.Random(seed).randint(every + 2, total - 5)
    pids = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        assert time.monotonic() < deadline, "the job never reached the step to kill at"
        if "ranks: " in line:
            pids = [int(p) for p in __import__("re").findall(r"pid (\d+)", line)]
        if line.startswith(f"step {kill_at}/"):
            break
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the whole job dies at once: no chance to write anything
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return kill_at


def test_sigkill_of_the_whole_job_then_resume_equals_uninterrupted(tmp_path):
    total, every = 400, 25
    # the uninterrupted reference: the simulator, bit-identical to mpiexec -n 3 (tested above)
    ref = simulate("configs/efficient-adam.yaml", 2, tmp_path / "ref", f"train.steps={total}")
    kill_at = _run_until_checkpoint_then_kill(tmp_path / "run", total, every, seed=2026)
    assert not (tmp_path / "run" / "summary.json").exists()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.h5"))
    assert ckpts, f"killed at step {kill_at} before any checkpoint"
    # the killed job's trace is readable up to its last flush
    p = subprocess.run(
        [*QTRAIN, "analyze", str(tmp_path / "run" / "trace.h5"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["last_step"] >= every and rep["last_step"] <= kill_at
    if shutil.which("h5dump") or os.environ.get("CI"):
        copy = tmp_path / "killed-trace.h5"
        shutil.copy(tmp_path / "run" / "trace.h5", copy)
        subprocess.run(["h5clear", "-s", str(copy)], check=True, capture_output=True)
        d = subprocess.run(["h5dump", "-d", "/steps", "-c", "3", str(copy)], capture_output=True, text=True)
        assert d.returncode == 0 and 'DATASET "/steps"' in d.stdout, d.stderr
    res = mpi_train(
        3,
        "configs/efficient-adam.yaml",
        tmp_path / "run",
        f"train.steps={total}",
        f"checkpoint.every={every}",
        "trace.csv=true",
        extra=("--resume", "auto"),
    )
    assert res.returncode == 0, res.stderr
    assert summary(tmp_path / "run")["params_sha256"] == ref["params_sha256"]
    # the live CSV, like the trace, holds each (step, name) once: it once held the steps after the
    # checkpoint twice (4,205 rows against 3,919)
    rows = (tmp_path / "run" / "metrics" / "rank-0.csv").read_text().splitlines()
    pairs = collections.Counter((r.split(",")[0], r.split(",")[2]) for r in rows[1:])
    assert set(pairs.values()) == {1} and {int(s) for s, _ in pairs} == set(range(1, total + 1))


def test_a_run_that_dies_right_after_a_checkpoint_keeps_every_trace_row_once(tmp_path):
    """The workers' rows of a step reach the trace with the next step's records (their
    communication times come a step late); at a checkpoint step they are written with the
    checkpoint, so a run that dies before the next flush and resumes loses none of them."""
    out, total = tmp_path / "run", 40
    sets = (f"train.steps={total}", "checkpoint.every=20", "trace.flush_every=10")
    # the launcher tears the job down when rank 0 vanishes; should it not (a fresh-clone CI run once
    # hung here for the test's 180 s), the workers' own deadline ends the job well within it
    died = mpi_train(
        3,
        "configs/efficient-adam.yaml",
        out,
        *sets,
        "runtime.timeout_s=30",
        env={"QTRAIN_INJECT_FAULT": "0:21:exit"},
    )
    assert died.returncode != 0
    res = mpi_train(3, "configs/efficient-adam.yaml", out, *sets, extra=("--resume", "auto"))
    assert res.returncode == 0, res.stderr
    steps, _, _ = read_trace(out / "trace.h5")
    pairs = collections.Counter(zip(steps["step"].tolist(), steps["rank"].tolist(), strict=True))
    assert set(pairs.values()) == {1}
    assert set(pairs) == {(s, r) for s in range(1, total + 1) for r in range(3)}


def test_damaged_checkpoint_is_skipped_by_resume_auto(tmp_path):
    out = tmp_path / "run"
    p = mpi_train(3, "configs/default.yaml", out, "train.steps=20", "checkpoint.every=10")
    assert p.returncode == 0, p.stderr
    newest = out / "checkpoints" / "step-0000020.h5"
    with h5py.File(newest, "r") as f:
        start = f["params"].id.get_chunk_info(0).byte_offset
    with open(newest, "r+b") as fh:
        fh.seek(start + 7)
        b = fh.read(1)
        fh.seek(start + 7)
        fh.write(bytes([b[0] ^ 0x10]))
    direct = subprocess.run([*QTRAIN, "checkpoint", "inspect", str(newest)], capture_output=True, text=True)
    assert direct.returncode == 2 and "SHA-256 does not match" in direct.stderr
    res = mpi_train(3, "configs/default.yaml", out, "train.steps=30", extra=("--resume", "auto"))
    assert res.returncode == 0, res.stderr
    assert "skipping damaged checkpoint" in res.stdout and "step-0000020.h5" in res.stdout
    assert "at step 10" in res.stdout


def test_resume_refusals_a_learning_rate_drop_and_a_worker_state_reset(tmp_path):
    """One run, resumed five ways (one test: each MPI launch costs seconds): a checkpoint at the
    last step leaves nothing to train (resuming a 30-step run with train.steps=20 once exited 0
    having trained nothing); another worker count is refused unless --reset-worker-state; another
    algorithm setting is refused; a learning-rate drop is taken and listed; then the reset."""
    out = tmp_path / "run"
    assert mpi_train(3, "configs/qadam.yaml", out, "train.steps=10").returncode == 0
    p = mpi_train(3, "configs/qadam.yaml", out, "train.steps=10", extra=("--resume", "auto"))
    assert p.returncode == 2
    assert "step-0000010.h5 is at step 10 and this run ends at step 10: nothing left to train" in p.stderr
    refused = mpi_train(4, "configs/qadam.yaml", out, "train.steps=20", extra=("--resume", "auto"))
    assert refused.returncode == 2
    assert (
        "written by 2 workers, this run has 3" in refused.stderr and "--reset-worker-state" in refused.stderr
    )
    p = mpi_train(
        3, "configs/qadam.yaml", out, "train.steps=20", "algorithm.beta1=0.8", extra=("--resume", "auto")
    )
    assert p.returncode == 2 and "differs from the checkpoint's in algorithm.beta1" in p.stderr
    p = mpi_train(
        3, "configs/qadam.yaml", out, "train.steps=20", "algorithm.lr=0.001", extra=("--resume", "auto")
    )
    assert p.returncode == 0, p.stderr
    assert "qtrain: resume changes algorithm.lr: 0.002 -> 0.001" in p.stdout
    changes = summary(out)["resume_changes"]
    assert changes == {"algorithm.lr": [0.002, 0.001], "train.steps": [10, 20]}
    # the drop took effect from the resumed step on: the run ends where the step-10 checkpoint,
    # restored in-process into engines built with lr 0.001, ends after 10 more steps; with lr
    # 0.002 (as if the drop were ignored) that continuation ends elsewhere
    ten = out / "checkpoints" / "step-0000010.h5"
    dropped = _continue_from(ten, load_config("configs/qadam.yaml", ["train.steps=20", "algorithm.lr=0.001"]))
    assert summary(out)["params_sha256"] == dropped
    assert _continue_from(ten, load_config("configs/qadam.yaml", ["train.steps=20"])) != dropped

    ok = mpi_train(
        4,
        "configs/qadam.yaml",
        out,
        "train.steps=30",
        "algorithm.lr=0.001",
        extra=("--resume", "auto", "--reset-worker-state"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "fresh worker state" in ok.stdout
    assert "--reset-worker-state" in (out / "logs" / "rank-3.log").read_text()
    assert summary(out)["steps"] == 30 and summary(out)["workers"] == 3


def test_trace_schema_h5dump_pandas_analyze_plot_and_export(tmp_path):
    out = tmp_path / "run"
    p = mpi_train(4, "configs/qadam.yaml", out, "train.steps=30", "train.eval_every=10")
    assert p.returncode == 0, p.stderr
    with h5py.File(out / "trace.h5", "r") as f:
        steps = f["steps"][()]
        units = json.loads(f["steps"].attrs["units"])
        assert f.attrs["algorithm"] == "qadam" and f.attrs["world_size"] == 4
        assert len(f["evals"]) == 3
    assert len(steps) == 30 * 4 and set(units) == set(steps.dtype.names)
    server = steps[steps["role"] == 0]
    workers = steps[steps["role"] == 1]
    assert (
        server["bytes_recv"]
        == np.array([workers[workers["step"] == s]["bytes_sent"].sum() for s in server["step"]])
    ).all()
    assert (workers["comm_s"] > 0).all() and (workers["compute_s"] > 0).all()
    s = summary(out)
    assert int(server["bytes_recv"].sum()) == s["bytes_up"]
    import pandas as pd

    df = pd.DataFrame.from_records(steps)
    assert list(df.columns) == list(steps.dtype.names) and len(df) == 120
    if shutil.which("h5dump") or os.environ.get("CI"):
        for path in (out / "trace.h5", out / "checkpoints" / "step-0000030.h5"):
            d = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
            assert d.returncode == 0, d.stderr
        d = subprocess.run(
            ["h5dump", "-d", "/params", "-c", "4", str(out / "checkpoints" / "step-0000030.h5")],
            capture_output=True,
            text=True,
        )
        assert "H5T_IEEE_F32LE" in d.stdout
    png = tmp_path / "report.png"
    a = subprocess.run(
        [
            *QTRAIN,
            "analyze",
            str(out / "trace.h5"),
            "--plot",
            str(png),
            "--csv",
            str(tmp_path / "s.csv"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert a.returncode == 0, a.stderr
    rep = json.loads(a.stdout)
    assert rep["steps_traced"] == 30 and rep["compression_up"] > 14 and 0 < rep["communication_share"] < 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 31
    from qtrain.analysis.plots import PANEL_TITLES, plot_trace
    from qtrain.analysis.trace_report import report
    from qtrain.io.trace import read_trace

    st, ev, attrs = read_trace(out / "trace.h5")
    drawn = plot_trace(st, ev, attrs, report(st, ev, attrs), str(tmp_path / "again.png"))
    assert [t.split(" (")[0] for t in drawn] == list(PANEL_TITLES)
    exported = tmp_path / "model.pt"
    e = subprocess.run(
        [*QTRAIN, "checkpoint", "export", str(out / "checkpoints" / "step-0000030.h5"), str(exported)],
        capture_output=True,
        text=True,
    )
    assert e.returncode == 0, e.stderr
    state = torch.load(exported, weights_only=True)
    from qtrain.models import build_model

    model = build_model("mlp", (1, 8, 8), 10, hidden=[64])
    model.load_state_dict(state)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    from qtrain.io.run_dir import params_sha256

    assert params_sha256(flat) == s["params_sha256"]
    i = subprocess.run(
        [*QTRAIN, "checkpoint", "inspect", str(out / "checkpoints" / "step-0000030.h5")],
        capture_output=True,
        text=True,
    )
    assert (
        i.returncode == 0
        and "verified: the file SHA-256" in i.stdout
        and "/workers/3/engine/error" in i.stdout
    )


def test_compare_runs(tmp_path):
    for name in ("efficient-adam", "adam"):
        assert mpi_train(3, f"configs/{name}.yaml", tmp_path / name, "train.steps=20").returncode == 0
    png = tmp_path / "cmp.png"
    p = subprocess.run(
        [
            *QTRAIN,
            "compare",
            str(tmp_path / "efficient-adam"),
            str(tmp_path / "adam"),
            "--plot",
            str(png),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["algorithm"] for r in rows] == ["efficient-adam", "adam"]
    assert rows[0]["compression_up"] > 28 and rows[1]["compression_up"] < 1.01
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("overlap", ["on", pytest.param("off", marks=pytest.mark.soak)])  # off: make soak
def test_timeline_is_ordered_causal_and_shows_the_overlap(tmp_path, overlap):
    out, steps, segments = tmp_path / "run", 12, 3
    p = mpi_train(
        5,
        "configs/efficient-adam.yaml",
        out,
        f"train.steps={steps}",
        f"runtime.segments={segments}",
        f"runtime.overlap={overlap}",
        "model.hidden=[256,256]",
        "trace.timeline_every=1",
    )
    assert p.returncode == 0, p.stderr
    t = read_timeline(out / "trace.h5")
    server, workers = t["timeline_server"], t["timeline_workers"]
    assert len(server) == steps * segments and len(workers) == steps * segments * 4  # the last step too
    order = ("uplinks_in_s", "aggregated_s", "encoded_s", "posted_s", "done_s")
    for a, b in itertools.pairwise(order):
        assert (server[a] <= server[b]).all(), (a, b)
    for step in range(1, steps + 1):
        s = np.sort(server[server["step"] == step], order="segment")
        assert (np.diff(s["posted_s"]) >= 0).all()  # broadcasts posted in segment order
    for a, b in (("start_s", "encode_start_s"), ("encode_start_s", "posted_s"), ("arrived_s", "applied_s")):
        assert (workers[a] <= workers[b]).all(), (a, b)
    # across ranks (one host: the measured clock offsets should be about zero)
    slack = 0.005
    for w in workers:
        s = server[(server["step"] == w["step"]) & (server["segment"] == w["segment"])][0]
        assert s["uplinks_in_s"] >= w["posted_s"] - slack
        assert w["arrived_s"] >= s["posted_s"] - slack
    first = workers[workers["segment"] == 0]
    if overlap == "on":  # segment 0 (the model's tail) is encoded while backward goes on
        assert (first["encode_start_s"] < first["backward_end_s"]).all()
    else:
        assert (first["encode_start_s"] >= first["backward_end_s"]).all()
    png = tmp_path / "t.png"
    a = subprocess.run(
        [*QTRAIN, "analyze", str(out), "--plot", str(png), "--timeline-step", "5"],
        capture_output=True,
        text=True,
    )
    assert a.returncode == 0, a.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    from qtrain.analysis.plots import plot_trace
    from qtrain.analysis.trace_report import report
    from qtrain.io.trace import read_trace

    st, ev, attrs = read_trace(out / "trace.h5")
    drawn = plot_trace(st, ev, attrs, report(st, ev, attrs), str(tmp_path / "again.png"), t, 5)
    assert drawn[-1].startswith("Timeline of step 5 ")
    bad = subprocess.run(
        [*QTRAIN, "analyze", str(out), "--plot", str(png), "--timeline-step", "99"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "step 99 has no timeline" in bad.stderr and "Traceback" not in bad.stderr
