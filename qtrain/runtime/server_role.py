"""The serving rank: takes each segment as soon as all its uplinks are in, runs the server rule and
posts the segment's downlink broadcast while later segments still arrive,
and through the Recorder evaluates, traces and shows progress; writes the checkpoints and returns
the summary."""

from __future__ import annotations

import numpy as np

from qtrain.engine.buffers import has_buffers, load_buffers, sync_due
from qtrain.engine.checkpointer import Checkpointer
from qtrain.engine.recorder import Recorder, WorkerReport
from qtrain.engine.snapshots import is_checkpoint_step, rng_restore, to_torch
from qtrain.io.net_counters import NetCounters
from qtrain.io.run_dir import params_sha256
from qtrain.runtime.buffer_sync import server_sync
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.records import FLAG_STOP
from qtrain.runtime.timeline import TimelineRecorder


def run_server(plan, model, transport, svc, world, out_dir, resume) -> dict:
    topo, part, cfg, setup = plan.topology, plan.partition, plan.cfg, plan.setup
    server = plan.server_engine(model.params)
    start = resume.step if resume is not None else 0
    rec = Recorder(
        setup,
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
    _start(plan, server, model, rec, transport, svc, resume)
    svc.watchdog.enter("clock sync")
    offsets = clock_offsets(topo, cfg.runtime.timeout_s) if timeline_wanted(cfg) else None
    timeline = TimelineRecorder(rec.trace, part, topo, offsets, cfg.trace.timeline_every)
    checkpointer = Checkpointer(out_dir, plan, world.mpi_library, world.hosts, svc.log, start)
    stop_reason, step = None, start
    sync_buffers = has_buffers(model.module)
    try:
        for step in range(start + 1, setup.steps + 1):
            maybe_fail(svc.fault, topo.rank, step)
            rec.begin_step(step)
            timeline.begin_step(step)
            server.begin_step()
            transport.post_uplinks()
            records: list = [None] * len(part)
            arrivals = transport.uplinks(step)
            for n in range(1, len(part) + 1):  # segments in the order their uplinks complete
                with rec.phase("gather"):
                    seg, recs, messages = next(arrivals)
                timeline.mark(seg, "uplinks_in_s")
                records[seg.index] = recs
                rec.uplinks([m.numel() for m in messages], seg)
                with rec.phase("aggregate", seg):
                    mean = server.aggregate(seg, messages)
                timeline.mark(seg, "aggregated_s")
                with rec.phase("server_step", seg):
                    down = server.make_downlink(seg, mean)
                timeline.mark(seg, "encoded_s")
                if n == len(part):  # every record of the step is in: decide the stop
                    stop_reason = _agreed_stop(svc.stop, records, topo)
                with rec.phase("broadcast", seg):
                    transport.post_downlink(seg, step, FLAG_STOP if stop_reason else 0, down)
                rec.downlink(down.numel(), seg)
            with rec.phase("broadcast"):
                transport.finish_downlinks(step)
            timeline.end_step(records, transport.down_posted_at, transport.down_done_at)
            buffers = None
            if sync_buffers and sync_due(cfg, step, setup.steps, stop_reason is not None):
                with rec.phase("buffers"):
                    buffers = server_sync(topo, model.module, cfg.model.buffers)
            if rec.eval_due(stop_reason is not None):
                svc.log.info("step %d eval %s", step, rec.evaluate(model, setup.dataset))
            rec.end_step(_report(records), server.last_stats)
            if is_checkpoint_step(cfg, step, setup.steps, stop_reason is not None):
                with rec.phase("checkpoint"):
                    parts = topo.comm.gather(None, root=topo.server)
                    times = np.array([parts[r][1:] for r in topo.workers], dtype=np.float64)
                    rec.complete_held_rows(times[:, 0], times[:, 1])  # a resume keeps this step's rows
                    rec.flush()
                    snaps = [to_torch(parts[r][0]) for r in topo.workers]
                    checkpointer.write(step, server, snaps, rec, server.replica, buffers)
            if stop_reason is not None:
                svc.log.info("stopping after step %d: %s", step, stop_reason)
                break
    finally:
        rec.progress.close()
    svc.watchdog.enter("final timing report")
    report = topo.comm.gather(None, root=topo.server)
    final = [report[r] for r in topo.workers]
    comm_s, decode_s, backward, arrived, applied = zip(*final, strict=True)
    timeline.close(np.array(backward), np.stack(arrived), np.stack(applied))
    rec.close(list(comm_s), list(decode_s))
    return rec.summary(
        model,
        setup.dataset,
        params_sha256(model.params),
        runner="mpi",
        world_size=topo.world_size,
        stopped_early=step < setup.steps,
        stop_reason=stop_reason,
        seconds_per_step=rec.seconds_per_step(),
        cuda_aware=world.cuda.answer,
        devices=world.devices,
        hosts=world.hosts,
        resumed_from=str(resume.path) if resume is not None else None,
    )


def _start(plan, server, model, rec, transport, svc, resume) -> None:
    """Restore the server from a checkpoint, or send the initial weights (weights mode)."""
    if resume is not None:
        t = resume.tree
        if "buffers" in t:
            load_buffers(model.module, t["buffers"])
        server.master.copy_(t["params"])
        server.replica.copy_(t["replica_params"])
        server.load_state_dict(t["server"])
        rng_restore(t["server"]["rng"])
        rec.load_state_dict(t["stats"])
        svc.log.info("resumed at step %d from %s", resume.step, resume.path)
        return
    if plan.setup.algorithm.downlink_mode != "weights":
        return
    svc.watchdog.enter("initial weights broadcast")
    for seg in plan.partition:
        initial = server.initial_message(seg)
        transport.post_downlink(seg, 0, 0, initial)
        rec.downlink(initial.numel(), seg)
    transport.finish_downlinks(0)


def _agreed_stop(stop, records: list, topo) -> str | None:
    """This rank's own stop request, or the workers that asked for one in this step's records."""
    if stop.requested:
        return stop.reason
    asked = sorted(
        {r for recs in records for r, f in zip(topo.workers, recs["flags"], strict=True) if f & FLAG_STOP}
    )
    return f"stop requested by rank(s) {', '.join(map(str, asked))}" if asked else None


def _report(records: list) -> WorkerReport:
    """One step's worker measurements from its records (one array of workers per segment): the
    per-step fields from the last segment, the per-segment ones summed."""
    last = records[-1]
    total = {k: np.sum([r[k] for r in records], axis=0) for k in ("encode_s", "err_sq", "ref_sq", "ef_sq")}
    return WorkerReport(
        last["loss"],
        last["compute_s"],
        total["encode_s"],
        total["err_sq"],
        total["ref_sq"],
        total["ef_sq"],
        prev_comm_s=last["prev_comm_s"],
        prev_decode_s=last["prev_decode_s"],
    )
