"""Co-located shards (issue 38, ``runtime.servers: colocated``, ``runtime/colocated.py``): N ranks
that each train and serve 1/N of the segments end with the parameters of one separate server,
bit for bit: the step driver's two sides alone (fixed- and variable-size codecs both ways, an
uncompressed warm-up, messages large enough for MPI's rendezvous protocol) under MPI and over
gloo; ``qtrain train`` (evaluations, checkpoints, traces) and a library script (buffers, a
schedule, extra state) against the simulator and separate serving ranks, with checkpoints that
resume across layouts both ways."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mpiexec_command
from mpi_helpers import mpi_train, summary
from test_library_mpi import SCRIPTS, qtrain_run
from test_torch_backend_runs import torchrun

from qtrain.config import ConfigError, load_config
from qtrain.engine.simulator import simulate
from qtrain.engine.topology import Topology
from qtrain.io.trace import read_trace

SCRIPT = str(Path(__file__).parent / "mpi_scripts" / "colocated_steps.py")
CASES = [
    # 1-bit both ways with error feedback, two uncompressed warm-up steps first, 5 segments
    "efficient-adam;train.steps=5;algorithm.uncompressed_steps=2;runtime.segments=5",
    # threshold-quantized uplinks and a sparse model downlink: variable-size both ways
    "qcmd-adagrad;train.steps=4",
    # fp32 Adam on a 1.1M-parameter MLP cut in 9 segments: each message 0.5 MB
    "adam;train.steps=3;model.hidden=[1024,1024];runtime.segments=9",
    # top-k uplinks (variable size) into a fixed-size downlink
    "adam;train.steps=4;uplink.codec=topk",
]


def _check(output: str) -> None:
    """Rank 0's line per case and every rank's last line (read with patterns: the launcher may
    interleave the ranks' lines)."""
    lines = re.findall(r"(\S+) colocated ([0-9a-f]{64}) simulator ([0-9a-f]{64})", output)
    assert [case for case, _, _ in lines] == CASES, output
    for case, ours, ref in lines:
        assert ours == ref, f"{case}: co-located {ours} != the simulator's {ref}"
    assert sorted(re.findall(r"colocated done rank (\d+)", output)) == ["0", "1", "2"], output


def test_colocated_ranks_under_mpi_equal_one_separate_server_bit_for_bit():
    p = subprocess.run(
        [*mpiexec_command(), "-n", "3", sys.executable, SCRIPT, *CASES],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "QTRAIN_BACKEND": "mpi"},
    )
    assert p.returncode == 0, p.stdout + p.stderr
    _check(p.stdout)


def test_colocated_ranks_over_gloo_equal_one_separate_server_bit_for_bit():
    p = torchrun(3, SCRIPT, *CASES, module=False)
    assert p.returncode == 0, p.stdout + p.stderr
    _check(p.stdout)


def test_a_colocated_rank_is_both_a_worker_and_an_owner():
    topo = Topology.colocated_ranks(4, rank=2)
    assert (topo.servers, topo.workers) == ((0, 1, 2, 3), (0, 1, 2, 3))
    assert (topo.is_server, topo.is_worker, topo.owner, topo.worker_index) == (True, True, 2, 2)
    assert topo.num_workers == 4 and topo.is_lead is False
    assert topo.describe() == "ranks 0..3 workers, each serving 1/4 of the model (co-located)"
    separate = Topology.parameter_server(5, rank=0, servers=1)
    assert (separate.is_server, separate.is_worker, separate.num_workers) == (True, False, 4)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        Topology.colocated_ranks(1)
    with pytest.raises(ValueError, match="serving ranks are every rank"):
        Topology(3, 0, (0, 1), colocated=True)


def test_runtime_servers_takes_a_count_or_colocated():
    assert load_config("configs/sgd.yaml", ["runtime.servers=colocated"]).runtime.colocated
    assert not load_config("configs/sgd.yaml", ["runtime.servers=2"]).runtime.colocated
    with pytest.raises(
        ConfigError, match="runtime.servers must be a count of serving ranks or colocated, got 'co'"
    ):
        load_config("configs/sgd.yaml", ["runtime.servers=co"])
    with pytest.raises(ConfigError, match="runtime.servers must be > 0"):
        load_config("configs/sgd.yaml", ["runtime.servers=0"])


TRAIN = ["train.steps=12", "train.eval_every=6", "checkpoint.every=6"]
COMPARED = ["params_sha256", "final_test_loss", "final_train_loss", "final_test_accuracy", "evals"]


def test_qtrain_train_colocated_equals_one_server_and_its_checkpoints_resume_in_any_layout(tmp_path):
    """``mpiexec -n 3 qtrain train`` co-located (1-bit Efficient-Adam both ways) gives the
    simulator's one-server run: parameters, evaluations and losses; the simulator's co-located
    run gives the MPI one's bytes too. The trace has a worker row and a server row per rank and
    step. Its step-6 checkpoint, resumed by 2 separate serving ranks under MPI and co-located over
    gloo, ends with the uninterrupted parameters."""
    config = "configs/efficient-adam.yaml"
    co = tmp_path / "co"
    p = mpi_train(3, config, co, *TRAIN, "runtime.servers=colocated")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 workers, each serving 1/3 (co-located)" in p.stdout
    ours = summary(co)
    one = simulate(load_config(config, TRAIN), 3, None, log=lambda _: None)
    assert {k: ours[k] for k in COMPARED} == {k: one[k] for k in COMPARED}
    sim = simulate(load_config(config, [*TRAIN, "runtime.servers=colocated"]), 3, None, log=lambda _: None)
    assert (sim["bytes_up"], sim["bytes_down"]) == (ours["bytes_up"], ours["bytes_down"])
    rows = read_trace(co / "trace.h5")[0]
    for role in (0, 1):  # every rank serves and works, every step
        mine = rows[rows["role"] == role]
        assert sorted(zip(mine["step"].tolist(), mine["rank"].tolist(), strict=True)) == [
            (s, r) for s in range(1, 13) for r in range(3)
        ]
    ckpt = str(co / "checkpoints" / "step-0000006.h5")
    k2 = tmp_path / "k2"
    p = mpi_train(5, config, k2, *TRAIN, "runtime.servers=2", extra=["--resume", ckpt])
    assert p.returncode == 0, p.stdout + p.stderr
    assert summary(k2)["params_sha256"] == ours["params_sha256"]
    gloo = tmp_path / "gloo"
    sets = [a for s in [*TRAIN, "runtime.servers=colocated"] for a in ("--set", s)]
    p = torchrun(3, "train", config, *sets, "--out", str(gloo), "--resume", ckpt)
    assert p.returncode == 0, p.stdout + p.stderr
    assert summary(gloo)["params_sha256"] == ours["params_sha256"]
    assert summary(gloo)["backend"] == "torch"


def test_a_library_script_colocated_resumes_separate_servers_checkpoint_bit_exactly(tmp_path):
    """tests/library_scripts/resumable.py (dropout, BatchNorm buffers, a warm-up + cosine schedule,
    extra state, a mid-epoch shard) under one separate server for 8 steps, then co-located on 3
    ranks resumed from its step-4 checkpoint: every worker's report and the parameters equal the
    uninterrupted run's; rank 0 prints the summary, no rank serves alone."""
    ref, co = tmp_path / "ref", tmp_path / "co"
    for d in (ref, co):
        d.mkdir()
    opts = ["--set", "checkpoint.every=4"]
    p = qtrain_run(SCRIPTS / "resumable.py", *opts, "--out", str(ref), np_=4,
                   args=["--steps", "8", "--report", str(ref)])  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    resume = ["--resume", str(ref / "checkpoints" / "step-0000004.h5"), "--set", "runtime.servers=colocated"]
    p = qtrain_run(SCRIPTS / "resumable.py", *opts, *resume, "--out", str(co), np_=3,
                   args=["--steps", "8", "--report", str(co)])  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "params sha256    " in p.stdout  # rank 0's summary table
    assert summary(co)["params_sha256"] == summary(ref)["params_sha256"]
    assert summary(co)["resumed_from"] == str(ref / "checkpoints" / "step-0000004.h5")
    for w in range(3):
        theirs = json.loads((ref / f"worker-{w}.json").read_text())
        assert json.loads((co / f"worker-{w}.json").read_text()) == theirs, w
    # with --reset-worker-state every worker keeps its own fresh generators (the script's dropout
    # draws from them): rank 0's lead side, which restores the server's, must not hand them to it
    for d, np_, layout in ((ref / "reset", 4, []), (co / "reset", 3, ["--set", "runtime.servers=colocated"])):
        d.mkdir()
        p = qtrain_run(SCRIPTS / "resumable.py", *opts, *layout, "--out", str(d), "--reset-worker-state",
                       "--resume", str(ref / "checkpoints" / "step-0000004.h5"), np_=np_,
                       args=["--steps", "8", "--report", str(d)])  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
    assert summary(co / "reset")["params_sha256"] == summary(ref / "reset")["params_sha256"]


def test_qtrain_simulate_takes_servers_colocated(tmp_path):
    """``qtrain simulate --servers colocated``: every virtual worker also serves; one server's
    parameters, and a bad value is one line."""
    args = [sys.executable, "-m", "qtrain", "simulate", "configs/sgd.yaml", "--workers", "3", "-q"]
    sets = ["--set", "train.steps=4"]
    p = subprocess.run(
        [*args, *sets, "--servers", "colocated", "--out", str(tmp_path / "co")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    one = simulate(load_config("configs/sgd.yaml", ["train.steps=4"]), 3, None, log=lambda _: None)
    assert summary(tmp_path / "co")["params_sha256"] == one["params_sha256"]
    p = subprocess.run(
        [*args, *sets, "--servers", "some", "--out", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "qtrain: error: --set runtime.servers=some: runtime.servers must be a count of serving ranks "
        "or colocated, got 'some'"
    ], p.stderr
