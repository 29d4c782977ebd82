"""The serving rank's pieces, for ``session.serve`` (``library/serve.py``, which ``qtrain train``
serves with too): the engine, recorder, step driver over the MPI transport, timeline and
checkpointer started (restored from a checkpoint, or the initial weights sent); the gathers of
the workers' checkpoint and final reports; the agreed stop; the run's facts for the summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtrain.engine.buffers import has_buffers, load_buffers
from qtrain.engine.checkpointer import Checkpointer
from qtrain.engine.recorder import Recorder
from qtrain.engine.records import FLAG_STOP
from qtrain.engine.shards import cut_state
from qtrain.engine.snapshots import rng_restore, to_torch
from qtrain.engine.step import ServerStep
from qtrain.io.net_counters import NetCounters
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.shard_serving import ServersLink, total_square_over
from qtrain.runtime.timeline import TimelineRecorder


@dataclass
class Serving:
    """What a serving rank runs with: its engine, recorder, step driver, timeline and
    checkpointer, started (restored from ``resume``, or the initial weights sent, and the clocks
    synchronised); ``start``: the step it continues after."""

    server: object
    rec: Recorder
    step: ServerStep
    timeline: TimelineRecorder
    checkpointer: Checkpointer
    start: int
    link: ServersLink | None = None  # the other serving ranks (runtime.servers > 1), or None


def start_serving(plan, model, transport, svc, world, out_dir, resume) -> Serving:
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
    if several:
        server_step.total_square = total_square_over(transport.comms.servers)
    restore_or_send_initial(plan, server, model, rec, svc, resume, server_step)
    svc.watchdog.enter("clock sync")
    offsets = clock_offsets(topo, cfg.runtime.timeout_s) if timeline_wanted(cfg) else None
    timeline = TimelineRecorder(rec.trace, part, topo, offsets, cfg.trace.timeline_every)
    server_step.timeline = timeline  # known once the clocks are synchronised, after start-up
    checkpointer = Checkpointer(out_dir, plan, world.mpi_library, world.hosts, svc.log, start)
    link = ServersLink(transport.comms.servers, topo, part) if several else None
    return Serving(server, rec, server_step, timeline, checkpointer, start, link)


def final_report(transport, serving: Serving, svc, on_report=None) -> None:
    """The workers' final report (``gather``): the last communication times and instants close
    the trace and the timeline. What follows those five fields in each worker's report is for
    ``on_report(reports)``, called while the trace is still open."""
    svc.watchdog.enter("final timing report")
    final = transport.reports()
    if on_report is not None:
        on_report(final)
    comm_s, decode_s, backward, arrived, applied = zip(*[f[:5] for f in final], strict=True)
    serving.timeline.close(np.array(backward), np.stack(arrived), np.stack(applied))
    serving.rec.close(list(comm_s), list(decode_s))


def gather_snapshots(transport, rec, on_report=None) -> list:
    """The workers' checkpoint reports (``gather``: snapshot, comm_s, decode_s, then what the
    caller's workers add, for ``on_report(reports)``): the held trace rows are completed with
    those times (a resume keeps them) and flushed; the snapshots in worker order."""
    reports = transport.reports()
    times = np.array([p[1:3] for p in reports], dtype=np.float64)
    rec.complete_held_rows(times[:, 0], times[:, 1])
    if on_report is not None:
        on_report(reports)
    rec.flush()
    return [to_torch(p[0]) for p in reports]


def run_facts(topo, world, rec, resume) -> dict:
    """What a run's summary says of where and how it ran, for ``qtrain train`` and the library."""
    return {
        "world_size": topo.world_size,
        "seconds_per_step": rec.seconds_per_step(),
        "cuda_aware": world.cuda.answer,
        "devices": world.devices,
        "hosts": world.hosts,
        "resumed_from": str(resume.path) if resume is not None else None,
        "resume_changes": resume.changes if resume is not None else None,
    }


def restore_or_send_initial(plan, server, model, rec, svc, resume, server_step) -> None:
    """Restore the server from a checkpoint, or send the initial weights (weights mode)."""
    if resume is not None:
        t = resume.tree
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


def agreed_stop(stop, records: list, topo) -> str | None:
    """This rank's own stop request, or the workers that asked for one in this step's records."""
    if stop.requested:
        return stop.reason
    asked = sorted(
        {r for recs in records for r, f in zip(topo.workers, recs["flags"], strict=True) if f & FLAG_STOP}
    )
    return f"stop requested by rank(s) {', '.join(map(str, asked))}" if asked else None
