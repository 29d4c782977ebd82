"""Rank 0: the parameter server. Gathers the uplinks, runs the server rule, broadcasts the
downlink, evaluates on the test split, writes the trace and the checkpoints, shows progress and
returns the summary."""

from __future__ import annotations

import json
import time

import numpy as np

from qtrain.engine import ServerEngine
from qtrain.engine.accounting import RunStats, trace_attrs
from qtrain.engine.snapshots import checkpoint_contents, is_checkpoint_step, rng_restore, to_torch
from qtrain.io.checkpoint import checkpoint_name, prune, write_checkpoint
from qtrain.io.run_dir import params_sha256
from qtrain.io.trace import TraceWriter, server_row, worker_rows
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.progress import ProgressReporter
from qtrain.runtime.records import FLAG_STOP


class Checkpointer:
    def __init__(self, ctx, server, model, stats):
        self.ctx, self.server, self.model, self.stats = ctx, server, model, stats
        self.dir = ctx.out_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, worker_snaps: list, replica_params) -> None:
        ctx = self.ctx
        tree, meta = checkpoint_contents(
            step,
            self.model.params,
            replica_params,
            self.model.layout,
            ctx.config_text,
            self.server,
            worker_snaps,
            self.stats,
            ctx.setup,
            ctx.mpi_library,
            ctx.hosts,
        )
        write_checkpoint(self.dir / checkpoint_name(step), tree, meta)
        prune(self.dir, ctx.setup.cfg.checkpoint.keep)
        ctx.log.info("checkpoint step %d written", step)


def run_server(ctx) -> dict:
    setup, log, cfg = ctx.setup, ctx.log, ctx.setup.cfg
    ds = setup.dataset
    model = ctx.model
    server = ServerEngine(setup.algorithm, setup.uplink.codec, setup.downlink, model.params, cfg.seed)
    stats = RunStats(model.numel, setup.workers)
    transport = ctx.transport
    workers = setup.workers
    start = 0
    if ctx.resume is not None:
        r = ctx.resume
        start = r["step"]
        model.params.copy_(r["params"])
        server.load_state_dict(r["server"])
        rng_restore(r["server"]["rng"])
        st = r["stats"]
        stats.bytes_up, stats.bytes_down = st["bytes_up"], st["bytes_down"]
        stats.messages_up, stats.messages_down = st["messages_up"], st["messages_down"]
        stats.last_batch_loss, stats.evals = st["last_batch_loss"], json.loads(st["evals"])
        log.info("resumed at step %d from %s", start, ctx.resume_path)
    else:
        initial = server.initial_message()
        if initial is not None:
            ctx.watchdog.enter("initial weights broadcast")
            transport.broadcast_downlink(0, 0, initial)
            stats.add_downlink(initial.numel())
    trace = None
    if cfg.trace.enabled:
        trace = TraceWriter(
            ctx.out_dir / "trace.h5",
            trace_attrs(setup, model.numel, workers + 1),
            cfg.trace.flush_every,
            resume_step=start if ctx.resume is not None else None,
        )
    checkpointer = Checkpointer(ctx, server, model, stats)
    progress = ProgressReporter(
        setup.steps, cfg.train.log_every, ctx.echo, cfg.train.progress, ctx.mpi_library
    )
    totals = {"gather_s": 0.0, "aggregate_s": 0.0, "server_step_s": 0.0, "broadcast_s": 0.0}
    worker_totals = np.zeros(3)
    accuracy, stop_reason, step = None, None, start
    pending = None  # the previous step's worker rows, completed by this step's records
    try:
        for step in range(start + 1, setup.steps + 1):
            maybe_fail(ctx.fault, 0, step)
            ctx.watchdog.enter(f"step {step}: gather uplinks")
            t0 = time.perf_counter()
            records, messages = transport.gather_uplinks()
            t1 = time.perf_counter()
            sizes = [m.numel() for m in messages]
            stats.add_uplinks(sizes)
            ctx.watchdog.enter(f"step {step}: aggregate + server rule")
            mean = server.aggregate(messages)
            t2 = time.perf_counter()
            downlink = server.make_downlink(mean)
            t3 = time.perf_counter()
            flagged = [i + 1 for i, f in enumerate(records["flags"]) if int(f) & FLAG_STOP]
            if ctx.stop.requested:
                stop_reason = ctx.stop.reason
            elif flagged:
                stop_reason = f"stop requested by rank(s) {', '.join(map(str, flagged))}"
            ctx.watchdog.enter(f"step {step}: broadcast downlink")
            transport.broadcast_downlink(step, FLAG_STOP if stop_reason else 0, downlink)
            t4 = time.perf_counter()
            stats.add_downlink(downlink.numel())
            for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                totals[key] += dt
            worker_totals += [
                records["compute_s"].mean(),
                records["encode_s"].mean(),
                records["prev_comm_s"].mean(),
            ]
            stats.last_batch_loss = float(records["loss"].mean())
            eval_s = 0.0
            if step % cfg.train.eval_every == 0 or step == setup.steps or stop_reason:
                ctx.watchdog.enter(f"step {step}: evaluate")
                te = time.perf_counter()
                ev = model.evaluate(ds.x_test, ds.y_test, ds.task)
                eval_s = time.perf_counter() - te
                stats.add_eval(step, ev, trace)
                accuracy = ev.get("accuracy")
                log.info("step %d eval %s", step, ev)
            if trace is not None:
                if pending is not None:
                    pending["comm_s"], pending["decode_s"] = records["prev_comm_s"], records["prev_decode_s"]
                    trace.add_rows(pending)
                times = {
                    "wait_s": t1 - t0,
                    "decode_s": t2 - t1,
                    "encode_s": t3 - t2,
                    "comm_s": t4 - t3,
                    "compute_s": eval_s,
                }
                trace.add_rows(
                    server_row(
                        step,
                        sizes,
                        downlink.numel(),
                        workers,
                        times,
                        stats.last_batch_loss,
                        records["rel_error"],
                        records["ef_norm"],
                        server.last_stats,
                    )
                )
                pending = worker_rows(
                    step,
                    sizes,
                    downlink.numel(),
                    records["compute_s"],
                    records["encode_s"],
                    records["loss"],
                    records["rel_error"],
                    records["ef_norm"],
                    server.last_stats,
                )
            stopping = stop_reason is not None
            if is_checkpoint_step(cfg, step, setup.steps, stopping):
                ctx.watchdog.enter(f"step {step}: checkpoint")
                snaps = [to_torch(x) for x in ctx.comm.gather(None, root=0)[1:]]
                # what every worker holds: the master itself in update mode, the decoded weights otherwise
                replica = (
                    model.params
                    if setup.algorithm.downlink_mode == "update"
                    else setup.downlink.codec.decode(downlink)
                )
                if trace is not None:
                    trace.flush()
                checkpointer.write(step, snaps, replica)
            if trace is not None:
                trace.maybe_flush(step)
            progress.update(
                step,
                stats.last_batch_loss,
                accuracy,
                stats.bytes_up / max(stats.messages_up, 1),
                stats.bytes_down / max(stats.messages_down, 1),
                stats.fp32_bytes(stats.messages_up) / max(stats.bytes_up, 1),
            )
            if stopping:
                log.info("stopping after step %d: %s", step, stop_reason)
                break
    finally:
        progress.close()
    ctx.watchdog.enter("final timing report")
    last = ctx.comm.gather(None, root=0)[1:]
    if trace is not None:
        if pending is not None:
            pending["comm_s"] = [c for c, _ in last]
            pending["decode_s"] = [d for _, d in last]
            trace.add_rows(pending)
        trace.close()
    ctx.watchdog.enter("final evaluation")
    final = model.evaluate(ds.x_test, ds.y_test, ds.task)
    train = model.evaluate(ds.x_train, ds.y_train, ds.task)
    done = max(step - start, 1)
    per_step = {k: v / done for k, v in totals.items()}
    w = worker_totals / done
    per_step.update({"worker_compute_s": w[0], "worker_encode_s": w[1], "worker_comm_s": w[2]})
    return stats.summary(
        setup,
        step,
        final,
        train,
        params_sha256(model.params),
        runner="mpi",
        world_size=workers + 1,
        stopped_early=step < setup.steps,
        stop_reason=stop_reason,
        seconds_per_step=per_step,
        cuda_aware=ctx.cuda.answer,
        devices=ctx.devices,
        resumed_from=str(ctx.resume_path) if ctx.resume_path else None,
    )
