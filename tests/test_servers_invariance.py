"""Results do not depend on the number of serving ranks (issue 23, DESIGN.md section 8): every
server rule is elementwise and every segment's stochastic rounding draws the counters of its own
elements, so K servers, each with the state of its own shard, compute what one server computes.

Here in the simulator, whose K in-process servers are the engines of the MPI serving ranks; the
MPI runs are compared with it in test_mpi_servers.py."""

import pytest
import torch

from qtrain.config import load_config
from qtrain.engine.partition import Partition
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.shards import cut_state, join_states
from qtrain.engine.simulator import simulate
from qtrain.engine.topology import Topology

ALGORITHMS = ["sgd", "adam", "ecq-sgd", "qadam", "efficient-adam", "qcmd-adagrad", "qrda-adagrad"]
COMPARED = ["params_sha256", "final_train_loss", "final_test_loss", "evals"]


def _run(name: str, *sets: str) -> dict:
    cfg = load_config(f"configs/{name}.yaml", ["train.steps=6", "train.eval_every=3", *sets])
    return simulate(cfg, 3, None, log=lambda _: None)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_one_two_and_three_servers_give_the_same_run(name):
    """The default cut (one segment) with one server against 2 and 3 servers, which cut at least
    K segments: segments end on bucket boundaries (every scaled codec is bucketed), so the cut
    changes no bit either; only the bytes (one message header more per segment) differ."""
    one = _run(name)
    for k in (2, 3):
        other = _run(name, f"runtime.servers={k}")
        assert other["segments"] >= k
        assert {c: other[c] for c in COMPARED} == {c: one[c] for c in COMPARED}, (name, k)


def test_a_shards_state_joins_and_cuts_back_exactly():
    cfg = load_config("configs/qrda-adagrad.yaml", ["runtime.servers=3", "runtime.segments=7"])
    plan, model = RunPlan.build(cfg, Topology.parameter_server(5, servers=3), torch.device("cpu"))
    whole = {
        "step": 4,
        "algorithm": {"sum_sq": torch.rand(model.numel), "grad_sum": torch.randn(model.numel)},
        "error": torch.randn(model.numel),
    }
    shards = [cut_state(whole, plan.partition.shard(k)) for k in range(3)]
    assert [s["error"].numel() for s in shards] == [
        plan.partition.shard(k).stop - plan.partition.shard(k).start for k in range(3)
    ]
    joined = join_states(shards)
    assert joined["step"] == 4 and torch.equal(joined["error"], whole["error"])
    assert all(torch.equal(joined["algorithm"][k], v) for k, v in whole["algorithm"].items())


def test_each_serving_rank_holds_only_its_shard():
    cfg = load_config("configs/efficient-adam.yaml", ["runtime.servers=2"])
    plan, model = RunPlan.build(cfg, Topology.parameter_server(4, servers=2), torch.device("cpu"))
    shard = plan.partition.shard(1)
    engine = plan.server_engine(model.params[shard].clone(), owner=1)
    n = shard.stop - shard.start
    assert 0 < n < model.numel
    assert engine.error.numel() == n and all(v.numel() == n for v in engine.state.values())
    with pytest.raises(ValueError, match="shard"):
        plan.server_engine(model.params.clone(), owner=1)


def test_the_topology_names_its_serving_ranks():
    t = Topology.parameter_server(6, rank=3, servers=2)
    assert t.servers == (0, 1) and t.workers == (2, 3, 4, 5) and t.worker_index == 1
    assert t.describe() == "ranks 0..1 servers, ranks 2..5 workers"
    assert Topology.parameter_server(6, rank=1, servers=2).owner == 1
    with pytest.raises(ValueError, match="needs at least 3 ranks"):
        Topology.parameter_server(2, servers=2)
    with pytest.raises(ValueError, match="too few"):
        Partition.build(1000, (512,), servers=3)


def test_the_memory_estimate_counts_a_serving_ranks_shard():
    """Each serving rank holds its shard's state and one full model (for evaluation): with one
    server the estimate is that of before (master, sum, scratch, moments, error, model)."""
    from qtrain.engine.memory_estimate import estimate

    needs = {}
    for k in (1, 2, 4):
        cfg = load_config("configs/efficient-adam.yaml", [f"runtime.servers={k}"])
        plan, model = RunPlan.build(cfg, Topology.parameter_server(4 + k, servers=k), torch.device("cpu"))
        needs[k] = estimate(plan.setup, plan.partition, 4)[1]
        n, setup = model.numel, plan.setup
    state = len(setup.algorithm.init_server_state(0, torch.device("cpu")))
    vectors_one = 3 + state + int(setup.downlink.error_feedback) + 1  # master, sum, scratch, state, E, model
    assert 4 * n * vectors_one < needs[1] < 4 * n * (vectors_one + 1)  # ... plus the messages
    assert needs[4] < needs[2] < needs[1]
    assert needs[4] > 4 * n  # the model for evaluation stays whole
