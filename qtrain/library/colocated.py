"""A co-located library run (``runtime.servers: colocated``, ``runtime/colocated.py``): every rank
is a worker of the user's loop and also serves 1/N of the segments, so the job has N ranks, all
training, and no ``session.serve()``.

Each rank's serving side is what a separate serving rank runs, started the same way: rank 0 is
the lead (``library/serve.start_lead``: recorder, trace, evaluation, checkpoints, summary), every
other rank an owner (``runtime/shard_serving.start_shard``). Instead of looping, it takes one
turn of the serving loop (``engine/serving_loop.ServingTurns``) inside each of its worker's
steps and control frames (``WorkerStep.serve``). At the end rank 0's lead side gathers the
master shards, combines the buffers with every rank, takes the final reports and writes
``summary.json``; :attr:`ColocatedServing.summary` holds it (``session.close()`` returns it).

The lead evaluates its own model holding the master parameters (``qtrain train``
evaluates it on the config's test split; a library script evaluates in its own loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from qtrain.engine.buffers import buffer_state, has_buffers, load_buffers
from qtrain.engine.flat import FlatModel
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.serving_loop import ServingTurns
from qtrain.engine.snapshots import rng_restore, rng_snapshot, to_cpu
from qtrain.engine.worker import WorkerEngine
from qtrain.io.run_dir import write_summary
from qtrain.library.layout_module import LayoutModule
from qtrain.library.serve import Evaluation, end_lead, start_lead
from qtrain.library.worker import LibraryWorker
from qtrain.runtime.colocated import ColocatedServer, ColocatedWorker, combine_buffers_everywhere
from qtrain.runtime.resume import ResumePoint
from qtrain.runtime.shard_serving import start_shard

if TYPE_CHECKING:
    from qtrain.library.session import Session


class ColocatedServing:
    """This rank's serving side: the lead's on rank 0, an owner's elsewhere, and its turns."""

    def __init__(
        self,
        session: Session,
        plan: RunPlan,
        flat: FlatModel,
        transport: ColocatedServer,
        evaluation: Evaluation | None,
        resume: ResumePoint | None,
    ):
        cfg, topo = plan.cfg, plan.topology
        device = torch.device("cpu") if cfg.runtime.server_device == "cpu" else session.device
        self.session, self.plan, self.flat, self.transport = session, plan, flat, transport
        self.group = transport.control  # every rank, in rank order
        self.summary: dict[str, Any] | None = None
        self.buffers_combined = False  # the lead combined them in its turn: the worker has them
        if topo.is_lead:
            # building the lead's model draws from the process's generators, and a resume sets
            # them to the server's: this rank's worker keeps its own (restored by its own resume,
            # or fresh, as a separate worker's)
            own = rng_snapshot()
            self.lead_model = _lead_model(session, plan, flat, device, evaluation is not None)
            evaluation = evaluation or Evaluation()
            self.lead = start_lead(session, plan, self.lead_model, transport, resume, evaluation)
            rng_restore(own)
            self.lead.combine_buffers = self._lead_combines
            self.turns = ServingTurns(self.lead.serving.step, self.lead, self.lead.serving.start)
        else:
            shard = plan.partition.shard(topo.rank)  # this rank's master copy: its shard only
            master = flat.params.detach()[shard].to(device).clone()
            self.owner = start_shard(plan, master, transport, session._svc, resume)
            self.turns = ServingTurns(self.owner.driver, self.owner, self.owner.start)

    def _modules(self) -> list[torch.nn.Module]:
        own = [self.lead_model.module] if self.plan.topology.is_lead else []
        return [self.flat.module, *own]

    def _lead_combines(self) -> None:
        """The lead asks for the buffers (to evaluate, or for a buffers frame) in its turn: every
        rank combines them, rank 0's worker now, the others once their step's downlinks are in."""
        combine_buffers_everywhere(self.group, self._modules(), self.plan.cfg.model.buffers)
        self.buffers_combined = True

    def worker_combines(self) -> None:
        """The worker's part of combining the buffers (after a step whose downlink asked for them,
        a ``session.sync_buffers()`` or the end): done already on rank 0 when its lead asked."""
        if self.buffers_combined:
            self.buffers_combined = False
            return
        combine_buffers_everywhere(self.group, self._modules(), self.plan.cfg.model.buffers)

    def ended(self) -> None:
        """Every worker ended: the master shards go to the lead."""
        if self.plan.topology.is_lead:
            if self.lead.link is not None:
                self.lead.link.gather_master(self.lead_model.params)
        else:
            self.owner.end()

    def finish(self) -> None:
        """After the final reports: the lead's summary, written."""
        if not self.plan.topology.is_lead:
            return
        try:
            self.summary = end_lead(self.session, self.lead, self.turns.served)
        finally:
            self.lead.rec.progress.close()
        write_summary(self.session.out_dir, self.summary)


def _lead_model(
    session: Session, plan: RunPlan, flat: FlatModel, device: torch.device, evaluates: bool
) -> FlatModel:
    """The lead's model, holding the master copy: the copy of the script's model that
    ``session.optimizer(evaluate=...)`` made, the config's model built anew when ``qtrain train``
    evaluates it, else a stand-in with the names and shapes of this rank's (as a separate serving
    rank without a model of its own has)."""
    if session._colocated_module is not None:  # the script's evaluate=: a copy of its model
        model = FlatModel(session._colocated_module, device)
    elif evaluates:  # qtrain train's: the config's model
        model = plan.model(device)
    else:
        params = [(n, tuple(p.shape)) for n, p in flat.module.named_parameters() if p.requires_grad]
        kind = type(flat.module).__name__
        model = FlatModel(LayoutModule(params, to_cpu(buffer_state(flat.module)), kind), device)
        model.layout.aliases = dict(flat.layout.aliases)
    model.params.copy_(flat.params.detach())
    if has_buffers(model.module):
        load_buffers(model.module, buffer_state(flat.module))
    return model


class ColocatedLibraryWorker(LibraryWorker):
    """The user's loop on a co-located rank: a library worker whose steps and control frames take
    this rank's serving turn, and whose buffers every rank combines."""

    def __init__(
        self,
        session: Session,
        flat: FlatModel,
        plan: RunPlan,
        engine: WorkerEngine,
        transport: ColocatedWorker,
        overlap: bool,
        serving: ColocatedServing,
        resume: ResumePoint | None,
    ):
        self.serving = serving
        super().__init__(session, flat, plan, engine, transport, overlap, resume)
        self.driver.serve = serving.turns.turn

    def _sync_buffers(self) -> None:
        if has_buffers(self.flat.module):  # the same answer on every rank: one model
            self.serving.worker_combines()

    def _ended(self) -> None:
        self.serving.ended()

    def _reported(self) -> None:
        self.serving.finish()
