"""``session.serve()``: the serving rank of a library run, a loop over the step driver's server
step (``engine/step.py``) until every worker's loop has ended.

Between steps the workers may send control frames instead of uplinks; the server then combines
the model buffers (``session.sync_buffers``: every replica adopts the combination), writes a
checkpoint (the workers' snapshots, with their own buffers and extra state, come by ``gather``;
the file's ``/buffers`` combine them, and the replicas keep their own, so a checkpoint changes
nothing and a resume is bit-exact) or ends the run (the replicas adopt the combined buffers).

A stop that a signal asks for is agreed as in ``qtrain train``: the downlink tells every worker
(``session.should_stop``), and their loops decide how to end. The trace, the checkpoints and
``summary.json`` are written as ``qtrain train`` writes them; the workers' ``session.log`` rows
land in the trace's ``metrics`` table."""

from __future__ import annotations

from qtrain.engine.buffers import combine, has_buffers, load_buffers
from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.step import worker_report
from qtrain.io.run_dir import params_sha256
from qtrain.library.errors import UsageError
from qtrain.runtime.buffer_sync import server_sync
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.server_role import final_report, gather_snapshots, run_facts, start_serving


def serve_run(session, plan, model, transport, resume) -> dict:
    svc, world, out_dir = session._svc, session._world, session.out_dir
    topo, cfg, setup = plan.topology, plan.cfg, plan.setup
    serving = start_serving(plan, model, transport, svc, world, out_dir, resume)
    server, rec, server_step, start = serving.server, serving.rec, serving.step, serving.start
    buffered = has_buffers(model.module)
    step, stop_reason = start + 1, None
    try:
        while True:
            maybe_fail(svc.fault, topo.rank, step)
            result = server_step.run(step)
            if result.control == FLAG_END:
                break
            if result.control == FLAG_BUFFERS:
                with rec.phase("buffers"):
                    server_sync(topo, model.module, cfg.model.buffers)
                continue
            if result.control == FLAG_CHECKPOINT:
                with rec.phase("checkpoint"):
                    snaps = gather_snapshots(topo, rec, on_report=lambda r: _metrics(rec, topo.workers, r))
                    buffers = None
                    if buffered:  # the file's /buffers combine the replicas, which keep their own
                        buffers = combine(cfg.model.buffers, [s["buffers"] for s in snaps])
                        load_buffers(model.module, buffers)
                    serving.checkpointer.write(step - 1, server, snaps, rec, server.replica, buffers)
                continue
            rec.end_step(worker_report(result.records), server.last_stats)
            if result.stop_reason is not None and stop_reason is None:
                stop_reason = result.stop_reason
                svc.log.info("stop agreed after step %d: %s", step, stop_reason)
            step += 1
    finally:
        rec.progress.close()
    if buffered:
        server_sync(topo, model.module, cfg.model.buffers)
    final_report(topo, serving, svc, on_report=lambda reports: _metrics(rec, topo.workers, reports))
    if step - 1 == start == 0:
        raise UsageError(
            "every worker's loop ended before its first optimizer.step(): nothing was trained "
            "(does the script's loop run? is its data empty?)"
        )
    empty = {"loss": None}
    return rec.stats.summary(
        setup,
        step - 1,
        empty,
        empty,
        params_sha256(model.params),
        runner="library",
        model=f"{model.module.kind} (the workers' own)",
        stopped_early=stop_reason is not None,
        stop_reason=stop_reason,
        **run_facts(topo, world, rec, resume),
    )


def _metrics(rec, ranks, reports) -> None:
    """The ``session.log`` rows each worker (``ranks``) sent last in its checkpoint or final report."""
    if rec.trace is None:
        return
    for r, report in zip(ranks, reports, strict=True):
        rec.trace.add_metrics(r, report[-1])
