"""Where this rank runs: its node-local rank and its torch device."""

from __future__ import annotations

import os

import torch


def local_rank(comm) -> int:
    """Rank among the processes on this node (MPI_COMM_TYPE_SHARED)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def oversubscribed(ranks_here: int, threads: int) -> bool:
    """More threads of ranks on this node than cores this process may run on."""
    return ranks_here * threads > len(os.sched_getaffinity(0))


def choose_device(setting: str, local: int) -> torch.device:
    """``auto``: ``cuda:(local % visible GPUs)`` when CUDA is available, else CPU.
    ``cpu``/``cuda``/``cuda:N``: as given (``cuda`` also spreads over the visible GPUs)."""
    if setting == "cpu":
        return torch.device("cpu")
    if setting.startswith("cuda:"):
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local % torch.cuda.device_count()}")
    if setting == "cuda":
        raise ValueError("runtime.device=cuda but CUDA is not available on this node")
    return torch.device("cpu")
