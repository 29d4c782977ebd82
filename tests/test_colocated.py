"""Co-located shards (issue 38, ``runtime/colocated.py``): N ranks that each train and serve 1/N
of the segments end with the parameters of one separate server, bit for bit, under MPI and over
torch.distributed (gloo), for fixed- and variable-size codecs both ways, an uncompressed warm-up
and messages large enough to need MPI's rendezvous protocol."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mpiexec_command
from test_torch_backend_runs import torchrun

from qtrain.engine.topology import Topology

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
    lines = [line.split() for line in output.splitlines() if " colocated " in line and " simulator " in line]
    assert [line[0] for line in lines] == CASES, output
    for case, _, ours, _, ref in lines:
        assert ours == ref, f"{case}: co-located {ours} != the simulator's {ref}"
    assert sorted(line for line in output.splitlines() if line.startswith("colocated done")) == [
        f"colocated done rank {r}" for r in range(3)
    ], output


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
