"""Several serving ranks under mpiexec (issue 23): the transport sends each segment's uplink to
its owner, and each owner broadcasts its own segments' downlinks on its own communicator
(runtime/communicators.py), fixed-size and variable-size codecs alike. The simulator's K servers
are compared with one in test_servers_invariance.py."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from conftest import mpiexec_command
from mpi_helpers import mpi_train, simulate, summary

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
        ("configs/efficient-adam.yaml", 2, ["runtime.segments=3"]),  # update mode, two-way EF
        ("configs/qrda-adagrad.yaml", 3, []),  # weights mode, variable-size codecs
    ],
)
def test_k_serving_ranks_train_what_one_simulated_server_trains(tmp_path, config, servers, sets):
    """K serving ranks under mpiexec end with the parameters, losses and evaluations of one
    simulated server; the trace has a server row per serving rank per step; the checkpoint holds
    one server's state (a K = 1 run resumes from it: test below)."""
    common = ["train.steps=6", "train.eval_every=3", *sets]
    one = simulate(config, 2, tmp_path / "sim", *common)
    run, p = _train(2 + servers, config, tmp_path / "mpi", *common, f"runtime.servers={servers}")
    for key in ("params_sha256", "final_test_loss", "final_train_loss", "evals"):
        assert run[key] == one[key], key
    assert f"{servers} servers + 2 workers" in p.stdout
    with h5py.File(tmp_path / "mpi" / "trace.h5") as f:
        steps = f["steps"][:]
        assert json.loads(f.attrs["server_ranks"]) == list(range(servers))
    rows = steps[steps["role"] == 0]
    assert sorted(set(rows["rank"].tolist())) == list(range(servers))
    assert len(rows) == 6 * servers
    workers_up = steps[steps["role"] == 1]["bytes_sent"].sum()
    assert rows["bytes_recv"].sum() == workers_up  # every owner's uplinks, each counted once


def test_a_run_with_two_serving_ranks_resumes_with_one(tmp_path):
    """The checkpoint is one server's state whatever K wrote it: K = 2 for 6 steps (a checkpoint
    at 3), resumed at step 3 with K = 1, ends where the uninterrupted K = 2 run ended."""
    sets = ["train.steps=6", "checkpoint.every=3", "runtime.segments=2"]
    whole, _ = _train(4, "configs/efficient-adam.yaml", tmp_path / "two", *sets, "runtime.servers=2")
    (tmp_path / "one").mkdir()
    shutil.copytree(tmp_path / "two" / "checkpoints", tmp_path / "one" / "checkpoints")
    resumed, p = _train(
        3,
        "configs/efficient-adam.yaml",
        tmp_path / "one",
        *sets,
        extra=["--resume", str(tmp_path / "one" / "checkpoints" / "step-0000003.h5")],
    )
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert "resume changes runtime.servers: 2 -> 1" in p.stdout


@pytest.mark.parametrize("kind", ["raise", "hang"])
def test_a_failing_second_serving_rank_ends_the_job_naming_it(tmp_path, kind):
    """Rank 1 serves the tail segments: raising, it is named; hanging, the workers' deadline names
    its broadcast (segment 0 is the tail's)."""
    start = time.monotonic()
    p = mpi_train(
        4,
        "configs/default.yaml",
        tmp_path,
        "runtime.servers=2",
        "runtime.timeout_s=5",
        env={"QTRAIN_INJECT_FAULT": f"1:3:{kind}"},
        timeout=120,
    )
    assert time.monotonic() - start < 60 and p.returncode != 0
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
