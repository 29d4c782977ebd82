"""Plug-in models for the tests (``model.name: plugin_models:NAME`` with ``tests`` on PYTHONPATH),
written as a user would: plain ``nn.Module`` builders that know nothing of qtrain."""

import math
import os

import torch
from torch import nn


def launcher_rank() -> int:
    """This process's MPI rank as the launcher tells it (0 outside MPI)."""
    return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def bn_mlp(input_shape, outputs, hidden: int = 64, track: bool = True, rank_seeded: bool = False):
    """An MLP with a default ``BatchNorm1d`` (running statistics) after its hidden layer. With
    ``rank_seeded`` its initial weights depend on the MPI rank, as an unseeded initialisation's do."""
    if rank_seeded:
        torch.manual_seed(1000 + launcher_rank())
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.BatchNorm1d(hidden, track_running_stats=track),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


def rank_wide_mlp(input_shape, outputs):
    """A model whose hidden width depends on the MPI rank: ranks disagree on its shapes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 16 + launcher_rank()),
        nn.ReLU(),
        nn.Linear(16 + launcher_rank(), outputs),
    )


def raising(input_shape, outputs):
    """A plug-in with a bug."""
    raise KeyError("hidden_size")


def no_parameters(input_shape, outputs):
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def exiting(input_shape, outputs):
    """A plug-in that ends the process (a script's argparse, say)."""
    raise SystemExit(0)


class _Counted(nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)
        self.count = nn.Parameter(torch.zeros((), dtype=torch.int64), requires_grad=False)

    def forward(self, x):
        return self.linear(x.flatten(1))


def integer_parameter(input_shape, outputs):
    """An integer counter kept as a Parameter, not a buffer."""
    return _Counted(math.prod(input_shape), outputs)


class _Hanging(nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, x):
        import time

        time.sleep(3600)  # a forward that never returns (a deadlocked kernel, a stuck reader)
        return self.linear(x.flatten(1))


def hanging(input_shape, outputs):
    return _Hanging(math.prod(input_shape), outputs)
