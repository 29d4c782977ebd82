"""What the engine hands a kernel to fuse in front of the uplink (kept free of numba, so the
engine imports it whether or not numba is installed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamFusion:
    """The local Adam step to fuse in front of the uplink: the moments (views of the worker's
    state), vmax for AMSGrad, the replica for weight decay, and the step's AdamConstants."""

    m: torch.Tensor
    v: torch.Tensor
    vmax: torch.Tensor | None
    params: torch.Tensor | None  # with weight decay
    weight_decay: float
    constants: object  # algorithms.adam_math.AdamConstants
