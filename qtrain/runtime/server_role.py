"""Rank 0: the parameter server. Gathers the uplinks, runs the server rule, broadcasts the
downlink, evaluates on the test split, shows progress and writes the summary."""

from __future__ import annotations

import time

import numpy as np

from qtrain.engine import ServerEngine
from qtrain.engine.accounting import RunStats
from qtrain.engine.setup import build_flat_model
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.progress import ProgressReporter
from qtrain.runtime.records import FLAG_STOP


def run_server(ctx) -> dict:
    setup, log, cfg = ctx.setup, ctx.log, ctx.setup.cfg
    ds = setup.dataset
    model = build_flat_model(setup, ctx.server_device)
    server = ServerEngine(setup.algorithm, setup.uplink.codec, setup.downlink, model.params, cfg.seed)
    stats = RunStats(model.numel, setup.workers)
    transport = ctx.transport
    initial = server.initial_message()
    if initial is not None:
        ctx.watchdog.enter("initial weights broadcast")
        transport.broadcast_downlink(0, 0, initial)
        stats.add_downlink(initial.numel())
    progress = ProgressReporter(setup.steps, cfg.train.log_every, ctx.echo)
    times = {"gather_s": 0.0, "aggregate_s": 0.0, "server_step_s": 0.0, "broadcast_s": 0.0}
    worker_times = np.zeros(3)  # compute, encode, comm (mean over workers, summed over steps)
    accuracy, stop_reason, step = None, None, 0
    try:
        for step in range(1, setup.steps + 1):
            maybe_fail(ctx.fault, 0, step)
            ctx.watchdog.enter(f"step {step}: gather uplinks")
            t0 = time.perf_counter()
            records, messages = transport.gather_uplinks()
            t1 = time.perf_counter()
            stats.add_uplinks([m.numel() for m in messages])
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
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key] += dt
            worker_times += [
                records["compute_s"].mean(),
                records["encode_s"].mean(),
                records["comm_s"].mean(),
            ]
            stats.last_batch_loss = float(records["loss"].mean())
            if step % cfg.train.eval_every == 0 or step == setup.steps or stop_reason:
                ctx.watchdog.enter(f"step {step}: evaluate")
                ev = model.evaluate(ds.x_test, ds.y_test, ds.task)
                stats.evals.append({"step": step, **{f"test_{k}": v for k, v in ev.items()}})
                accuracy = ev.get("accuracy")
                log.info("step %d eval %s", step, ev)
            progress.update(
                step,
                stats.last_batch_loss,
                accuracy,
                stats.bytes_up / stats.messages_up,
                stats.bytes_down / max(stats.messages_down, 1),
                stats.fp32_bytes(stats.messages_up) / stats.bytes_up,
            )
            if stop_reason:
                log.info("stopping after step %d: %s", step, stop_reason)
                break
    finally:
        progress.close()
    ctx.watchdog.enter("final evaluation")
    final = model.evaluate(ds.x_test, ds.y_test, ds.task)
    train = model.evaluate(ds.x_train, ds.y_train, ds.task)
    from qtrain.io.run_dir import params_sha256

    per_step = {k: v / max(step, 1) for k, v in times.items()}
    w = worker_times / max(step, 1)
    per_step.update({"worker_compute_s": w[0], "worker_encode_s": w[1], "worker_comm_s": w[2]})
    return stats.summary(
        setup,
        step,
        final,
        train,
        params_sha256(model.params),
        runner="mpi",
        world_size=setup.workers + 1,
        stopped_early=step < setup.steps,
        stop_reason=stop_reason,
        seconds_per_step=per_step,
        cuda_aware=ctx.cuda.answer,
        devices=ctx.devices,
    )
