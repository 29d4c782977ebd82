"""Several serving ranks under mpiexec (issue 23): the transport sends each segment's uplink to
its owner, and each owner broadcasts its own segments' downlinks on its own communicator
(runtime/communicators.py), fixed-size and variable-size codecs alike. The simulator's K servers
are compared with one in test_servers_invariance.py."""

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import mpiexec_command
from mpi_helpers import mpi_train, simulate, summary

from qtrain.io.trace import read_timeline, read_trace

SCRIPT = Path(__file__).parent / "mpi_scripts" / "transport_owners.py"


@pytest.mark.parametrize("servers, ranks, codec", [(2, 5, "sign"), (3, 6, "threshold")])
def test_each_owner_receives_its_segments_and_broadcasts_them(servers, ranks, codec):
    p = subprocess.run(
        [*mpiexec_command(), "-n", str(ranks), sys.executable, str(SCRIPT), str(servers), codec],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    owners = list(range(servers))
    # the ranks' lines may interleave on the launcher's stdout: count them, not the line breaks
    ranks_ok = sorted(
        int(r) for r in re.findall(rf"ok rank (\d+) owners {re.escape(str(owners))} segments 5", p.stdout)
    )
    assert ranks_ok == list(range(ranks)), p.stdout


def _train(ranks: int, config: str, out, *sets: str, extra=()):
    p = mpi_train(ranks, config, out, *sets, extra=extra, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return summary(out), p


@pytest.mark.parametrize(
    "config, servers, sets",
    [
        # update mode, two-way EF, steps 1-2 uncompressed (the frames switch size at step 3)
        ("configs/efficient-adam.yaml", 2, ["runtime.segments=3", "algorithm.uncompressed_steps=2"]),
        ("configs/qrda-adagrad.yaml", 3, []),  # weights mode, variable-size codecs
    ],
)
def test_k_serving_ranks_train_what_one_simulated_server_trains(tmp_path, config, servers, sets):
    """K serving ranks under mpiexec end with the parameters, losses and evaluations of one
    simulated server; the trace has a server row per serving rank per step; the checkpoint holds
    one server's state (a K = 1 run resumes from it: test below)."""
    common = ["train.steps=6", "train.eval_every=3", "trace.timeline_every=2", *sets]
    one = simulate(config, 2, tmp_path / "sim", *common)
    run, p = _train(2 + servers, config, tmp_path / "mpi", *common, f"runtime.servers={servers}")
    for key in ("params_sha256", "final_test_loss", "final_train_loss", "evals"):
        assert run[key] == one[key], key
    assert f"{servers} servers + 2 workers" in p.stdout
    with h5py.File(tmp_path / "mpi" / "trace.h5") as f:
        steps = f["steps"][:]
        assert json.loads(f.attrs["server_ranks"]) == list(range(servers))
        owners = json.loads(f.attrs["segment_owners"])
    rows = steps[steps["role"] == 0]
    assert sorted(set(rows["rank"].tolist())) == list(range(servers))
    assert len(rows) == 6 * servers
    workers_up = steps[steps["role"] == 1]["bytes_sent"].sum()
    assert rows["bytes_recv"].sum() == workers_up  # every owner's uplinks, each counted once
    for r in range(servers):  # each serving rank's own decode CPU seconds (the others' via StepPart)
        assert (rows[rows["rank"] == r]["decode_cpu_s"] > 0).all(), r
    assert owners == sorted(owners, reverse=True) and set(owners) == set(range(servers))  # lead: the head
    check_timeline(tmp_path / "mpi" / "trace.h5", owners, steps=[2, 4, 6], workers=[servers, servers + 1])


def check_timeline(trace, owners: list[int], steps: list[int], workers: list[int]) -> None:
    """Every segment of every recorded step has its owner's instants, in order on the lead's
    clock (the others' mapped with their offsets; one host: the same clock up to the round trip;
    another owner may begin a step before the lead, whose evaluation it does not wait for),
    worker instants fit the owner's (sent before the owner had every uplink, arrived after it
    posted the broadcast), and the plot draws a lane per serving rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qtrain.analysis.plots import plot_timeline
    from qtrain.io.trace import read_timeline

    t = read_timeline(trace)
    server, rows = t["timeline_server"], t["timeline_workers"]
    assert sorted(set(server["step"].tolist())) == steps == sorted(set(rows["step"].tolist()))
    assert len(server) == len(steps) * len(owners) and len(rows) == len(server) * len(workers)
    chain = ("uplinks_in_s", "aggregated_s", "encoded_s", "posted_s", "done_s")
    for a, b in itertools.pairwise(chain):
        assert (server[a] <= server[b]).all(), (a, b)
    assert (server["encoded_s"] != 0).all() and (server["done_s"] != 0).all()  # every owner's filled in
    tol = 0.005  # the offsets' error on one host
    for r in rows:
        s = server[(server["step"] == r["step"]) & (server["segment"] == r["segment"])][0]
        assert r["start_s"] <= r["posted_s"] <= s["uplinks_in_s"] + tol, (r, s)
        assert s["posted_s"] <= r["arrived_s"] + tol and r["arrived_s"] <= r["applied_s"], (r, s)
    fig, ax = plt.subplots()
    plot_timeline(ax, t, steps[-1], owners)
    labels = [x.get_text() for x in ax.get_yticklabels()]
    assert labels == [f"server rank {k}" for k in sorted(set(owners))] + [f"rank {w}" for w in workers]
    plt.close(fig)


def test_a_run_with_two_serving_ranks_resumes_with_one_and_another_cut(tmp_path):
    """The checkpoint is one server's state whatever K and cut wrote it: K = 2 in 2 segments for 6
    steps (a checkpoint at 3), resumed at step 3 with K = 1 in 3 segments, and with K = 2 in 3
    segments, ends where the uninterrupted run ended. The trace keeps its rows when the ranks are
    the same (its timeline rows only with the same cut), else it is kept beside the new one."""
    sets = ["train.steps=6", "checkpoint.every=3", "trace.timeline_every=1"]
    config, two = "configs/efficient-adam.yaml", tmp_path / "two"
    whole, _ = _train(4, config, two, *sets, "runtime.servers=2", "runtime.segments=2")
    (tmp_path / "one" / "checkpoints").mkdir(parents=True)  # a copy of the run at its checkpoint
    shutil.copy(two / "trace.h5", tmp_path / "one" / "trace.h5")
    shutil.copy(two / "checkpoints" / "step-0000003.h5", tmp_path / "one" / "checkpoints")
    own = ["--resume", str(tmp_path / "one" / "checkpoints" / "step-0000003.h5")]
    resumed, p = _train(3, config, tmp_path / "one", *sets, "runtime.segments=3", extra=own)
    assert resumed["segments"] == 3 and whole["segments"] == 2
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert "resume changes runtime.servers: 2 -> 1" in p.stdout
    assert "runtime.segments: 2 -> 3" in p.stdout
    assert "trace.h5 was written by 4 ranks, ranks [0, 1] serving; this run has 3" in p.stdout
    steps, _, _ = read_trace(tmp_path / "one" / "trace.h5")
    assert sorted(set(steps["step"].tolist())) == [4, 5, 6]
    aside, _, _ = read_trace(tmp_path / "one" / "trace-before-resume-at-step-3.h5")
    assert sorted(set(aside["step"].tolist())) == [1, 2, 3, 4, 5, 6]  # the first run's, whole

    resume = ["--resume", str(two / "checkpoints" / "step-0000003.h5")]
    again, _ = _train(4, config, two, *sets, "runtime.servers=2", "runtime.segments=3", extra=resume)
    assert again["params_sha256"] == whole["params_sha256"]
    steps, _, _ = read_trace(two / "trace.h5")
    assert sorted(set(steps["step"].tolist())) == [1, 2, 3, 4, 5, 6]  # the same ranks: rows kept
    timeline = read_timeline(two / "trace.h5")["timeline_server"]  # not those of 2 segments
    assert sorted(set(timeline["step"].tolist())) == [4, 5, 6]
    assert set(timeline["segment"].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("kind", ["raise", "hang"])
def test_a_failing_second_serving_rank_ends_the_job_naming_it(tmp_path, kind):
    """Rank 1 serves the tail segments: raising, it is named; hanging, the workers' deadline names
    its broadcast (segment 0 is the tail's)."""
    p = mpi_train(
        4,
        "configs/default.yaml",
        tmp_path,
        "runtime.servers=2",
        "runtime.timeout_s=5",
        env={"QTRAIN_INJECT_FAULT": f"1:3:{kind}"},
        timeout=120,
    )
    assert p.returncode != 0  # bounded by the launch's timeout
    if kind == "raise":
        assert "qtrain: rank 1 failed: InjectedFault: injected fault on rank 1 at step 3" in p.stderr
    else:
        assert re.search(
            r"Stalled: no progress for 5 s in phase 'downlink broadcast' "
            r"\(step 3, segment 0\) from rank\(s\) 1",
            p.stderr,
        ), p.stderr


def test_a_library_script_with_batchnorm_serves_on_two_ranks_as_on_one(tmp_path):
    """examples/bn_cnn.py (the user's loop, BatchNorm buffers, schedule, clipping) under `qtrain
    run`: with two serving ranks both call serve(), and the run ends where one server's does."""
    from test_library_mpi import ROOT, qtrain_run

    shas = []
    for k in (1, 2):
        out = tmp_path / f"k{k}"
        p = qtrain_run(
            ROOT / "examples" / "bn_cnn.py",
            "-c",
            "examples/configs/digits.yaml",
            "--out",
            str(out),
            "--set",
            f"runtime.servers={k}",
            args=["--epochs", "1"],
            np_=2 + k,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        shas.append(summary(out)["params_sha256"])
    assert shas[0] == shas[1]
