"""The MPI half of the buffer policy (``qtrain/engine/buffers.py``): workers send their model
buffers to the serving rank, which combines them in worker order and sends the result back, so that
the server evaluates and checkpoints it and every worker continues from it. Pickled collectives
(``engine/reports.BufferReport`` each way): this runs at evaluations and checkpoints only, never
on the per-step hot path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from qtrain.engine.buffers import buffer_state, combine, load_buffers
from qtrain.engine.reports import BufferReport
from qtrain.engine.snapshots import to_numpy, to_torch

if TYPE_CHECKING:
    from qtrain.runtime.transport import ServerTransport, WorkerTransport


def server_sync(transport: ServerTransport, module: torch.nn.Module, policy: str) -> dict:
    """On the serving rank: gather, combine, send back, adopt; the combined buffers."""
    combined = combine(policy, [to_torch(part.buffers) for part in transport.reports(BufferReport)])
    transport.share(BufferReport(to_numpy(combined)))
    load_buffers(module, combined)
    return combined


def worker_sync(transport: WorkerTransport, module: torch.nn.Module) -> None:
    """On a worker: send this replica's buffers, adopt the combined ones."""
    transport.report(BufferReport(to_numpy(buffer_state(module))))
    load_buffers(module, to_torch(transport.shared(BufferReport).buffers))
