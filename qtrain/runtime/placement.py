"""Where this rank runs: its node-local rank and its torch device."""

from __future__ import annotations

import os
import socket

import torch


def oversubscribed(ranks_here: int, threads: int) -> bool:
    """More threads of ranks on this node than cores this process may run on."""
    return ranks_here * threads > len(os.sched_getaffinity(0))


def choose_device(setting: str, local: int, key: str = "runtime.device") -> torch.device:
    """``auto``: ``cuda:(local % visible GPUs)`` when CUDA is available, else CPU.
    ``cpu``/``cuda``/``cuda:N``: as given (``cuda`` also spreads over the visible GPUs). A CUDA
    device this node lacks is a ValueError naming ``key`` and the node, which set-up turns into one
    line for the job (it was a traceback per rank when the first tensor moved there)."""
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if setting == "auto":
            return torch.device("cpu")
        raise ValueError(f"{key}={setting} but CUDA is not available on node {socket.gethostname()}")
    count = torch.cuda.device_count()
    if setting.startswith("cuda:"):
        if int(setting.removeprefix("cuda:")) >= count:
            raise ValueError(
                f"{key}={setting} but node {socket.gethostname()} has {count} visible GPU(s): "
                f"cuda:0 to cuda:{count - 1}"
            )
        return torch.device(setting)
    return torch.device(f"cuda:{local % count}")
