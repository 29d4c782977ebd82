"""One model for every rank of a library run: the workers compare their models' parameter and
buffer names and shapes (a mismatch is one line naming the rank and the first difference), then
every rank adopts one rank's initial parameters and buffers, as torch DDP broadcasts rank 0's
module state: the serving rank's (rank 0) when it serves with a model of its own
(``session.serve(model)``, as ``qtrain train`` does), worker 0's otherwise. Without a model of
its own the serving rank never sees the user's class: it builds a :class:`LayoutModule` with the
same names and shapes. Every rank also adopts the source's record of tied parameters' other
``state_dict`` names (``FlatModel.layout.aliases``, which checkpoints keep for ``checkpoint
export``). Collective over every rank; the backend's pickled object collectives (start-up only)."""

from __future__ import annotations

import torch

from qtrain.engine.buffers import buffer_state, has_buffers, load_buffers
from qtrain.engine.flat import FlatModel
from qtrain.engine.snapshots import to_numpy, to_torch
from qtrain.library.layout_module import LayoutModule
from qtrain.runtime.model_agreement import first_difference, model_signature


class ModelsDiffer(Exception):
    """Raised on every rank, with the same one line, when the workers' models do not agree."""


def share_model(
    topology,
    flat: FlatModel | None,
    device: torch.device,
    ended: bool = False,
    serving: bool = True,
    server_module: torch.nn.Module | None = None,
    refusal: str | None = None,
) -> FlatModel:
    """Workers pass their flattened model (``ended``: the script ended without one; ``refusal``:
    a line that ends the run instead, every rank exiting 2); the serving rank passes None and
    gets its own ``server_module`` flattened, or a stand-in, holding worker 0's initial state
    (``serving=False``: the serving rank's script ended without serving). Raises
    :class:`ModelsDiffer` on every rank when the models do not agree or a worker refused."""
    backend, root = topology.backend, topology.server
    payload = refusal or (None if not topology.is_worker or ended else model_signature(flat))
    parts = backend.gather(payload, root=root)
    problem = None
    if not topology.is_worker and server_module is not None:
        flat = FlatModel(server_module, device)
    if topology.is_lead:  # the gathered signatures are the lead's
        problem = (
            _problem(topology, parts, flat)
            if serving
            else "the serving rank (rank 0) ended without calling session.serve() "
            "(if session.is_server: session.serve())"
        )
    source = root if server_module is not None else topology.workers[0]
    problem, source = backend.bcast((problem, source), root=root)
    if problem:
        raise ModelsDiffer(problem)
    mine = backend.rank == source
    # the source's model: its signature and class name (for the serving rank's stand-in), buffers,
    # frozen parameters and the other state_dict names of tied parameters in one pickled
    # broadcast, then the flat parameters
    signature, kind, buffers, frozen, aliases = backend.bcast(
        (
            model_signature(flat),
            type(flat.module).__name__,
            to_numpy(buffer_state(flat.module)),
            to_numpy({n: p.detach() for n, p in flat.module.named_parameters() if not p.requires_grad}),
            dict(flat.layout.aliases),
        )
        if mine
        else None,
        root=source,
    )
    buffers = to_torch(buffers)
    if not topology.is_worker and flat is None:
        params = [
            (what.split(" ", 1)[1], shape) for what, shape, _ in signature if what.startswith("parameter ")
        ]
        flat = FlatModel(LayoutModule(params, buffers, kind), device)
    # the stand-in registers each parameter once: it learns the names of tied ones (checkpoints
    # record them for `checkpoint export`) from the source, as every rank does
    flat.layout.aliases = dict(aliases)
    if not mine:  # frozen parameters are the source's too
        with torch.no_grad():
            for name, p in flat.module.named_parameters():
                if not p.requires_grad:
                    p.copy_(to_torch(frozen[name]))
    flat_init = flat.params.detach().cpu().clone() if mine else torch.empty(flat.numel, dtype=torch.float32)
    backend.bcast_tensor(flat_init, root=source)
    flat.params.copy_(flat_init)
    if has_buffers(flat.module):
        load_buffers(flat.module, buffers)
    return flat


def _problem(topology, parts: list, server_model: FlatModel | None) -> str | None:
    workers = list(topology.workers)
    refused = [parts[r] for r in workers if isinstance(parts[r], str)]
    if refused:  # a worker's refusal, said by rank 0 (``session._refuse_script_settings``)
        return refused[0]
    absent = [r for r in workers if parts[r] is None]
    if absent:
        return (
            f"rank(s) {', '.join(map(str, absent))} ended without calling session.optimizer(model): "
            "every worker must create the optimizer (the serving rank learns the model from it)"
        )
    source = workers[0]
    for r in workers[1:]:
        why = first_difference(parts[source], parts[r], ref=f"rank {source}'s")
        if why:
            return f"rank {r}'s model differs from rank {source}'s: it {why}"
    if server_model is not None:
        why = first_difference(parts[source], model_signature(server_model), ref=f"rank {source}'s")
        if why:
            return (
                f"the model given to session.serve() (rank {topology.server}) differs from rank "
                f"{source}'s: it {why}"
            )
    return None
