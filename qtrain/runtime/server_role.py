"""The serving rank's pieces, for ``session.serve`` (``library/serve.py``, which ``qtrain train``
serves with too): the engine, recorder, step driver over the transport, timeline and
checkpointer started (restored from a checkpoint, or the initial weights sent); the gathers of
the workers' checkpoint and final reports (``engine/reports.py``); the agreed stop; the run's
facts for the summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qtrain.engine.buffers import has_buffers, load_buffers
from qtrain.engine.checkpointer import Checkpointer
from qtrain.engine.flat import FlatModel
from qtrain.engine.recorder import Recorder
from qtrain.engine.records import FLAG_STOP
from qtrain.engine.reports import CheckpointReport, FinalReport
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.server import ServerEngine
from qtrain.engine.shards import cut_state
from qtrain.engine.snapshots import rng_restore, to_torch
from qtrain.engine.step import ServerStep
from qtrain.engine.topology import Topology
from qtrain.io.net_counters import NetCounters
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.resume import ResumePoint
from qtrain.runtime.shard_serving import ServersLink, total_square_over
from qtrain.runtime.timeline import TimelineRecorder
from qtrain.runtime.transport import ServerTransport

if TYPE_CHECKING:
    from qtrain.runtime.signals import StopRequest
    from qtrain.runtime.startup import WorldInfo


@dataclass
class Serving:
    """What a serving rank runs with: its engine, recorder, step driver, timeline and
    checkpointer, started (restored from ``resume``, or the initial weights sent, and the clocks
    synchronised); ``start``: the step it continues after."""

    server: ServerEngine
    rec: Recorder
    step: ServerStep
    timeline: TimelineRecorder
    checkpointer: Checkpointer
    start: int
    link: ServersLink | None = None  # the other serving ranks (runtime.servers > 1), or None


def start_serving(
    plan: RunPlan,
    model: FlatModel,
    transport: ServerTransport,
    svc: Any,  # runtime/services.RankServices
    world: WorldInfo,
    out_dir: Path,
    resume: ResumePoint | None,
) -> Serving:
    """The (lead) serving rank's side of a run, ``qtrain train``'s and the library's alike. With
    several serving ranks its engine serves its own shard, a view of ``model.params`` (the other
    shards arrive when the lead evaluates, checkpoints or ends: ``runtime/shard_serving.py``)."""
    topo, part, cfg = plan.topology, plan.partition, plan.cfg
    several = len(topo.servers) > 1
    master = model.params[part.shard(0)] if several else model.params
    server = plan.server_engine(master, owner=0 if several else None)
    start = resume.step if resume is not None else 0
    rec = Recorder(
        plan.setup,
        topo,
        part,
        svc.echo,
        out_dir,
        svc.watchdog,
        cfg.train.progress,
        world.mpi_library,
        start,
        counters=NetCounters.from_env(),
    )
    server_step = ServerStep(
        server,
        transport,
        part,
        rec,
        decide_stop=lambda records: agreed_stop(svc.stop, records, topo),
        names=[f"rank {r}" for r in topo.workers],
        segments=transport.mine,
    )
    servers = transport.comms.servers
    if several and servers is not None:
        server_step.total_square = total_square_over(servers)
    restore_or_send_initial(plan, server, model, rec, svc, resume, server_step)
    svc.watchdog.enter("clock sync")
    offsets = clock_offsets(topo, cfg.runtime.timeout_s) if timeline_wanted(cfg) else None
    timeline = TimelineRecorder(rec.trace, part, topo, offsets, cfg.trace.timeline_every)
    server_step.timeline = timeline  # known once the clocks are synchronised, after start-up
    checkpointer = Checkpointer(out_dir, plan, world.mpi_library, world.hosts, svc.log, start)
    link = ServersLink(servers, topo, part) if several and servers is not None else None
    return Serving(server, rec, server_step, timeline, checkpointer, start, link)


def final_report(
    transport: ServerTransport,
    serving: Serving,
    svc: Any,  # runtime/services.RankServices
    on_report: Callable[[list[FinalReport]], None] | None = None,
) -> None:
    """The workers' final reports (``gather``): the last communication times and instants close
    the trace and the timeline; the reports go to ``on_report(reports)`` first, while the trace
    is still open (their ``session.log`` rows)."""
    svc.watchdog.enter("final timing report")
    final = transport.reports(FinalReport)
    if on_report is not None:
        on_report(final)
    backward = np.array([f.backward_end for f in final])
    serving.timeline.close(
        backward, np.stack([f.arrived for f in final]), np.stack([f.applied for f in final])
    )
    serving.rec.close([f.comm_s for f in final], [f.decode_s for f in final])


def gather_snapshots(
    transport: ServerTransport,
    rec: Recorder,
    on_report: Callable[[list[CheckpointReport]], None] | None = None,
) -> list[dict[str, Any]]:
    """The workers' checkpoint reports (``gather``): the held trace rows are completed with their
    communication times (a resume keeps them) and flushed, after ``on_report(reports)``; the
    snapshots in worker order."""
    reports = transport.reports(CheckpointReport)
    comm_s = np.array([p.comm_s for p in reports], dtype=np.float64)
    decode_s = np.array([p.decode_s for p in reports], dtype=np.float64)
    rec.complete_held_rows(comm_s, decode_s)
    if on_report is not None:
        on_report(reports)
    rec.flush()
    return [to_torch(p.snapshot) for p in reports]


def run_facts(topo: Topology, world: WorldInfo, rec: Recorder, resume: ResumePoint | None) -> dict[str, Any]:
    """What a run's summary says of where and how it ran, for ``qtrain train`` and the library."""
    return {
        "world_size": topo.world_size,
        "backend": world.backend,
        "seconds_per_step": rec.seconds_per_step(),
        "cuda_aware": world.cuda.answer,
        "devices": world.devices,
        "hosts": world.hosts,
        "resumed_from": str(resume.path) if resume is not None else None,
        "resume_changes": resume.changes if resume is not None else None,
    }


def restore_or_send_initial(
    plan: RunPlan,
    server: ServerEngine,
    model: FlatModel,
    rec: Recorder,
    svc: Any,  # runtime/services.RankServices
    resume: ResumePoint | None,
    server_step: ServerStep,
) -> None:
    """Restore the server from a checkpoint, or send the initial weights (weights mode)."""
    if resume is not None:
        t = resume.tree
        if t is None:
            raise ValueError(f"rank {plan.topology.rank}: a serving rank resumes from the whole checkpoint")
        if "buffers" in t:
            load_buffers(model.module, t["buffers"])
        elif has_buffers(model.module):
            svc.echo(
                f"qtrain: warning: {resume.path} holds no model buffers (written before model.buffers): "
                "they start from the model's initial values and are combined at the next evaluation"
            )
        model.params.copy_(t["params"])  # the lead's engine serves a view of it (its shard)
        server.replica.copy_(t["replica_params"][server.shard])
        server.load_state_dict(cut_state(t["server"], server.shard))
        rng_restore(t["server"]["rng"])
        rec.load_state_dict(t["stats"])
        svc.log.info("resumed at step %d from %s", resume.step, resume.path)
        return
    if plan.setup.algorithm.downlink_mode == "weights":
        svc.watchdog.enter("initial weights broadcast")
        server_step.send_initial()


def agreed_stop(stop: StopRequest, records: list[np.ndarray], topo: Topology) -> str | None:
    """This rank's own stop request, or the workers that asked for one in this step's records."""
    if stop.requested:
        return stop.reason
    asked = sorted(
        {r for recs in records for r, f in zip(topo.workers, recs["flags"], strict=True) if f & FLAG_STOP}
    )
    return f"stop requested by rank(s) {', '.join(map(str, asked))}" if asked else None
