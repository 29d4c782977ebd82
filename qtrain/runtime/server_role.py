"""Rank 0: the parameter server. Gathers the uplinks, runs the server rule, broadcasts the
downlink, evaluates on the test split, writes the trace and the checkpoints, shows progress and
returns the summary."""

from __future__ import annotations

import json
import time

import numpy as np

import qtrain
from qtrain.engine import ServerEngine
from qtrain.engine.accounting import RunStats
from qtrain.engine.setup import build_flat_model
from qtrain.io.checkpoint import checkpoint_name, prune, write_checkpoint
from qtrain.io.run_dir import params_sha256
from qtrain.io.trace import TraceWriter, empty_rows
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.progress import ProgressReporter
from qtrain.runtime.records import FLAG_STOP
from qtrain.runtime.state import rng_restore, rng_snapshot, to_cpu, to_torch
from qtrain.runtime.worker_role import is_checkpoint_step


def trace_attrs(setup, numel: int, world: int) -> dict:
    from qtrain.codecs import get_codec

    up, down = setup.uplink.codec, setup.downlink.codec
    return {
        "algorithm": setup.algorithm.name,
        "uplink_codec": json.dumps(
            {"codec": up.name, **up.params(), "error_feedback": setup.uplink.error_feedback}
        ),
        "downlink_codec": json.dumps(
            {"codec": down.name, **down.params(), "error_feedback": setup.downlink.error_feedback}
        ),
        "uplink_bits_per_element": 8 * up.wire_bytes(numel) / numel,
        "downlink_bits_per_element": 8 * down.wire_bytes(numel) / numel,
        "fp32_message_bytes": get_codec("none").wire_bytes(numel),
        "numel": numel,
        "world_size": world,
        "workers": world - 1,
        "steps_planned": setup.steps,
        "qtrain_version": qtrain.__version__,
    }


class Checkpointer:
    def __init__(self, ctx, server, model, stats):
        self.ctx, self.server, self.model, self.stats = ctx, server, model, stats
        self.dir = ctx.out_dir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, worker_snaps: list, replica_params) -> None:
        ctx, cfg = self.ctx, self.ctx.setup.cfg
        s = self.stats
        tree = {
            "step": step,
            "params": self.model.params.detach().cpu().clone(),
            "replica_params": replica_params,
            "config": ctx.config_text,
            "layout": json.dumps(self.model.layout),
            "server": to_cpu({**self.server.state_dict(), "rng": rng_snapshot()}),
            "workers": {str(r): snap for r, snap in enumerate(worker_snaps, start=1)},
            "stats": {
                "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down,
                "messages_up": s.messages_up,
                "messages_down": s.messages_down,
                "last_batch_loss": float(s.last_batch_loss),
                "evals": json.dumps(s.evals),
            },
        }
        import torch

        meta = {
            "params_sha256": params_sha256(self.model.params),
            "step": step,
            "workers": ctx.setup.workers,
            "world_size": ctx.setup.workers + 1,
            "algorithm": ctx.setup.algorithm.name,
            "roles": "rank 0 server, ranks 1.. workers",
            "qtrain_version": qtrain.__version__,
            "torch_version": torch.__version__,
            "mpi_library": ctx.mpi_library,
            "hosts": json.dumps(ctx.hosts),
        }
        write_checkpoint(self.dir / checkpoint_name(step), tree, meta)
        prune(self.dir, cfg.checkpoint.keep)
        ctx.log.info("checkpoint step %d written", step)


def run_server(ctx) -> dict:
    setup, log, cfg = ctx.setup, ctx.log, ctx.setup.cfg
    ds = setup.dataset
    model = build_flat_model(setup, ctx.server_device)
    server = ServerEngine(setup.algorithm, setup.uplink.codec, setup.downlink, model.params, cfg.seed)
    stats = RunStats(model.numel, setup.workers)
    transport = ctx.transport
    workers = setup.workers
    start = 0
    replica = model.params.detach().cpu().clone()  # what the workers hold (update mode: == master)
    if ctx.resume is not None:
        r = ctx.resume
        start = r["step"]
        model.params.copy_(r["params"])
        replica = r["replica_params"].clone()
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
            replica = setup.downlink.codec.decode(initial).cpu()
    trace = None
    if cfg.trace.enabled:
        trace = TraceWriter(
            ctx.out_dir / "trace.h5",
            trace_attrs(setup, model.numel, workers + 1),
            cfg.trace.flush_every,
            resume_step=start if ctx.resume is not None else None,
        )
    checkpointer = Checkpointer(ctx, server, model, stats)
    progress = ProgressReporter(setup.steps, cfg.train.log_every, ctx.echo)
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
                stats.evals.append({"step": step, **{f"test_{k}": v for k, v in ev.items()}})
                accuracy = ev.get("accuracy")
                if trace is not None:
                    trace.add_eval(step, ev["loss"], accuracy)
                log.info("step %d eval %s", step, ev)
            if trace is not None:
                if pending is not None:
                    pending["comm_s"], pending["decode_s"] = records["prev_comm_s"], records["prev_decode_s"]
                    trace.add_rows(pending)
                rows = empty_rows(workers + 1)
                server_row = rows[0]
                server_row["step"], server_row["rank"], server_row["role"] = step, 0, 0
                server_row["bytes_sent"], server_row["bytes_recv"] = downlink.numel() * workers, sum(sizes)
                server_row["wait_s"], server_row["decode_s"] = t1 - t0, t2 - t1
                server_row["encode_s"], server_row["comm_s"], server_row["compute_s"] = (
                    t3 - t2,
                    t4 - t3,
                    eval_s,
                )
                server_row["loss"] = stats.last_batch_loss
                server_row["up_rel_error"], server_row["up_ef_norm"] = (
                    records["rel_error"].mean(),
                    records["ef_norm"].mean(),
                )
                server_row["down_rel_error"] = server.last_stats.get("down_rel_error", 0.0)
                server_row["down_ef_norm"] = server.last_stats.get("down_ef_norm", 0.0)
                w = rows[1:]
                w["step"], w["rank"], w["role"] = step, np.arange(1, workers + 1), 1
                w["bytes_sent"], w["bytes_recv"] = sizes, downlink.numel()
                w["compute_s"], w["encode_s"], w["loss"] = (
                    records["compute_s"],
                    records["encode_s"],
                    records["loss"],
                )
                w["up_rel_error"], w["up_ef_norm"] = records["rel_error"], records["ef_norm"]
                w["down_rel_error"] = server_row["down_rel_error"]
                w["down_ef_norm"] = server_row["down_ef_norm"]
                trace.add_rows(rows[:1])
                pending = rows[1:].copy()
            stopping = stop_reason is not None
            if setup.algorithm.downlink_mode == "update":
                replica = None  # equal to the master, taken from it when a checkpoint is written
            else:
                replica = downlink
            if is_checkpoint_step(cfg, step, setup.steps, stopping):
                ctx.watchdog.enter(f"step {step}: checkpoint")
                snaps = [to_torch(x) for x in ctx.comm.gather(None, root=0)[1:]]
                rep = (
                    model.params.detach().cpu().clone()
                    if replica is None
                    else setup.downlink.codec.decode(replica).cpu()
                )
                if trace is not None:
                    trace.flush()
                checkpointer.write(step, snaps, rep)
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
