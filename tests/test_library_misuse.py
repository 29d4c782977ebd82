"""Library misuse that once passed silently or with a traceback per worker (issue #37), checked in
process: the guards are plain code on one worker, and a ``UsageError`` raised there is the one line
``qtrain: rank R failed: UsageError: ...`` under MPI (``session._fail_rank``, as every misuse in
tests/test_library_mpi.py shows)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qtrain.config import load_config
from qtrain.engine.flat import FlatModel
from qtrain.engine.topology import Topology
from qtrain.library.errors import UsageError
from qtrain.library.session import Session
from qtrain.library.worker import LibraryWorker


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _step_line(flat: FlatModel) -> str:
    """The line ``optimizer.step()`` refuses with at step 3 (the worker's guard runs before any
    communication, so a worker of only the fields it reads shows it)."""
    worker = SimpleNamespace(closed=False, steps_done=2, flat=flat)
    with pytest.raises(UsageError) as caught:
        LibraryWorker.step(worker)
    return str(caught.value)


def test_unfreezing_a_layer_after_the_optimizer_is_refused_naming_it():
    """It was ignored: exit 0, and the layer never trained (its gradient landed in a ``.grad`` that
    no step read). docs/library.md promised a refusal."""
    net = _net()
    net[0].requires_grad_(False)
    flat = FlatModel(net, torch.device("cpu"))
    assert flat.changed_parameter() is None
    net[0].bias.requires_grad_(True)
    assert _step_line(flat) == (
        "step 3: parameter 0.bias was unfrozen (requires_grad=True) after session.optimizer(model), which "
        "fixed the parameters qtrain trains and keeps them in its flat buffers: replace, reshape, freeze or "
        "unfreeze parameters (requires_grad_) and move the model to session.device before creating the "
        "optimizer"
    )
    net[0].bias.requires_grad_(False)
    assert flat.changed_parameter() is None  # frozen again: the set qtrain trains


def test_freezing_or_adding_a_layer_after_the_optimizer_is_refused_naming_it():
    net = _net()
    flat = FlatModel(net, torch.device("cpu"))
    net[2].weight.requires_grad_(False)
    assert _step_line(flat).startswith(
        "step 3: parameter 2.weight was frozen (requires_grad=False) after session.optimizer(model)"
    )
    net[2].weight.requires_grad_(True)
    net.append(nn.Linear(3, 3))  # a new head after the optimizer: it would never train either
    assert flat.changed_parameter() == "parameter 3.weight was added"


def _worker_session(tmp_path) -> Session:
    """Worker 0 of 2's session, without MPI: what ``session.shard`` and its checkpoint read."""
    topology = Topology.parameter_server(3, rank=1)
    world = SimpleNamespace(devices=["cpu", "cpu", "cpu"])
    setup = SimpleNamespace(cfg=load_config(None))
    return Session(None, None, None, topology, setup, world, tmp_path)


def _data() -> TensorDataset:
    return TensorDataset(torch.arange(64.0))


def test_a_resume_with_one_shard_more_than_the_checkpoint_is_one_line_naming_it(tmp_path):
    """Once a ValueError traceback on every worker."""
    ckpt = Path("/runs/r/checkpoints/step-0000003.h5")
    before = _worker_session(tmp_path)
    first = before.shard(_data(), batch_size=4)
    next(iter(first))
    after = _worker_session(tmp_path)
    after._resume_shards(before._shard_positions(), ckpt)
    resumed = after.shard(_data(), batch_size=4)
    assert resumed.position == 1  # the checkpoint's position
    with pytest.raises(UsageError) as caught:
        after.shard(_data(), batch_size=4)
    assert str(caught.value) == (
        "session.shard(): the checkpoint /runs/r/checkpoints/step-0000003.h5 holds the data positions of 1 "
        "shard(s), and this is shard 2: a resumed loop makes the same shards in the same order"
    )


def test_a_resume_with_fewer_shards_is_refused_at_its_checkpoint_before_a_position_is_lost(tmp_path):
    """Once silent: the next checkpoint dropped the shards not made, and a later resume started them
    over. Refused where the position would be lost (a loop may make a shard after its first step)."""
    ckpt = Path("/runs/r/checkpoints/step-0000003.h5")
    before = _worker_session(tmp_path)
    for _ in range(3):
        before.shard(_data(), batch_size=4)
    after = _worker_session(tmp_path)
    after._resume_shards(before._shard_positions(), ckpt)
    after.shard(_data(), batch_size=4)
    with pytest.raises(UsageError) as caught:
        after._shard_positions()
    assert str(caught.value) == (
        "session.checkpoint(): the run resumed from /runs/r/checkpoints/step-0000003.h5, which holds the "
        "data positions of 3 shard(s), and this loop has made 1: the position of shard 2 would be lost (a "
        "resumed loop makes the same shards in the same order, before its first checkpoint)"
    )
    after.shard(_data(), batch_size=4)
    after.shard(_data(), batch_size=4)
    assert len(after._shard_positions()) == 3  # all made: the checkpoint has every position


def test_evaluate_goes_to_serve_when_ranks_serve_apart(tmp_path):
    """session.optimizer(evaluate=...) is for co-located runs, whose rank 0 leads; with a serving
    rank of its own the server evaluates, and the call says where evaluate= goes."""
    sess = _worker_session(tmp_path)
    with pytest.raises(UsageError, match=r"pass evaluate= to session.serve\(model, evaluate=...\)"):
        sess.optimizer(nn.Linear(2, 2), evaluate=lambda m: {"loss": 0.0})
