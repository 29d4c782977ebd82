"""Every rank trains the same model: the ranks compare their models' parameter and buffer names,
shapes and dtypes at start-up (a mismatch is one line naming the rank and the first difference),
then every worker adopts the serving rank's initial parameters and buffers, as torch DDP broadcasts
rank 0's module state. A plug-in that initialises from an unseeded generator, or from anything
that differs between ranks, therefore still trains one model; the built-in models are seeded alike
on every rank, so for them the broadcast changes no bit."""

from __future__ import annotations

import numpy as np
import torch

from qtrain.engine.buffers import buffer_state, has_buffers, load_buffers
from qtrain.engine.snapshots import to_numpy, to_torch


def model_signature(model) -> list[tuple[str, tuple[int, ...], str]]:
    """(what, shape, dtype) of every trainable parameter, every frozen one and every buffer."""
    params = [(f"parameter {name}", tuple(shape), "torch.float32") for name, _, shape in model.layout]
    params += [
        (f"frozen parameter {name}", tuple(p.shape), str(p.dtype))
        for name, p in model.module.named_parameters()
        if not p.requires_grad
    ]
    buffers = [(f"buffer {name}", tuple(b.shape), str(b.dtype)) for name, b in model.module.named_buffers()]
    # every buffer, persistent or not: a non-persistent one of another shape is another model too
    return params + buffers


def first_difference(reference: list, other: list, ref: str = "rank 0's") -> str | None:
    """How ``other`` (a rank's signature) first differs from ``reference`` (``ref``: whose it is),
    as words that follow "it", or None."""
    for mine, theirs in zip(other, reference, strict=False):
        if mine[0] != theirs[0]:
            return f"has {mine[0]} where {ref} has {theirs[0]}"
        if mine[1:] != theirs[1:]:
            return (
                f"has {mine[0]} of shape {list(mine[1])} ({mine[2]}) where {ref} is "
                f"{list(theirs[1])} ({theirs[2]})"
            )
    if len(other) > len(reference):
        return f"has {other[len(reference)][0]}, which {ref} has not"
    if len(other) < len(reference):
        return f"lacks {ref} {reference[len(other)][0]}"
    return None


def adopt_server_model(topology, model) -> None:
    """Every worker's parameters and buffers become the serving rank's (collective)."""
    comm, root = topology.comm, topology.server
    flat = (
        model.params.detach().cpu().numpy().copy()
        if topology.is_server
        else np.empty(model.numel, np.float32)
    )
    comm.Bcast(flat, root=root)
    if not topology.is_server:
        model.params.copy_(torch.from_numpy(flat))
    if has_buffers(model.module):
        state = comm.bcast(to_numpy(buffer_state(model.module)) if topology.is_server else None, root=root)
        if not topology.is_server:
            load_buffers(model.module, to_torch(state))
