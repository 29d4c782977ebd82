"""Validation shared by the codecs whose payload carries element indices."""

from __future__ import annotations

import torch

from qtrain.codecs.errors import WireFormatError


def check_increasing_indices(idx: torch.Tensor, numel: int, codec: str) -> torch.Tensor:
    """``idx`` (any integer dtype) as int64, after checking it is strictly increasing in [0, numel)."""
    idx = idx.to(torch.int64)
    if idx.numel() == 0:
        return idx
    if int(idx[0]) < 0 or int(idx[-1]) >= numel:
        raise WireFormatError(f"{codec}: an index is outside 0..{numel - 1}")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise WireFormatError(f"{codec}: indices are not strictly increasing")
    return idx
