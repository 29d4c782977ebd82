"""Ranks 1..K-1: compute gradients on the own shard, send compressed updates, apply the downlink,
send the own state to rank 0 at checkpoint steps."""

from __future__ import annotations

import time

import numpy as np

from qtrain.engine import WorkerEngine
from qtrain.engine.setup import build_sampler
from qtrain.engine.snapshots import is_checkpoint_step, to_numpy, worker_restore, worker_snapshot
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.records import FLAG_STOP, UPLINK_RECORD


def run_worker(ctx) -> None:
    setup, rank, log, cfg = ctx.setup, ctx.rank, ctx.log, ctx.setup.cfg
    worker = rank - 1
    model = ctx.model
    engine = WorkerEngine(
        setup.algorithm, setup.uplink, setup.downlink.codec, model.numel, ctx.device, cfg.seed, worker
    )
    sampler = build_sampler(setup, worker)
    ds = setup.dataset
    transport = ctx.transport
    start = 0
    if ctx.resume is not None:
        start = ctx.resume["step"]
        model.params.copy_(ctx.resume["replica_params"])
        if ctx.resume_worker is not None:
            worker_restore(ctx.resume_worker, engine, sampler)
        else:
            log.info("--reset-worker-state: moments, error buffers and data position start from zero")
        log.info("resumed at step %d", start)
    elif setup.algorithm.downlink_mode == "weights":
        ctx.watchdog.enter("initial weights broadcast")
        _, msg = transport.recv_downlink()
        engine.apply_downlink(msg, model.params)
    record = np.zeros(1, dtype=UPLINK_RECORD)
    comm_s = decode_s = 0.0
    for step in range(start + 1, setup.steps + 1):
        ctx.watchdog.enter(f"step {step}: compute")
        maybe_fail(ctx.fault, rank, step)
        t0 = time.perf_counter()
        idx = sampler.next_batch()
        loss = model.loss_and_grad(ds.x_train[idx].to(ctx.device), ds.y_train[idx].to(ctx.device), ds.task)
        t1 = time.perf_counter()
        ctx.watchdog.enter(f"step {step}: encode")
        packed = engine.make_uplink(model.grads, model.params)
        t2 = time.perf_counter()
        record["step"], record["loss"] = step, loss
        record["compute_s"], record["encode_s"] = t1 - t0, t2 - t1
        record["prev_comm_s"], record["prev_decode_s"] = comm_s, decode_s
        record["rel_error"] = engine.last_stats.get("up_rel_error", 0.0)
        record["ef_norm"] = engine.last_stats.get("up_ef_norm", 0.0)
        record["flags"] = FLAG_STOP if ctx.stop.requested else 0
        ctx.watchdog.enter(f"step {step}: uplink/downlink")
        transport.send_uplink(record, packed)
        head, msg = transport.recv_downlink()
        t3 = time.perf_counter()
        engine.apply_downlink(msg, model.params)
        t4 = time.perf_counter()
        comm_s, decode_s = t3 - t2, t4 - t3
        if step % cfg.train.log_every == 0:
            log.info(
                "step %d loss %.5f compute %.4fs encode %.4fs comm %.4fs",
                step,
                loss,
                t1 - t0,
                t2 - t1,
                comm_s,
            )
        stopping = bool(int(head["flags"]) & FLAG_STOP)
        if is_checkpoint_step(cfg, step, setup.steps, stopping):
            ctx.watchdog.enter(f"step {step}: checkpoint gather")
            ctx.comm.gather(to_numpy(worker_snapshot(engine, sampler)), root=0)
        if stopping:
            log.info("stopping after step %d as agreed (local: %s)", step, ctx.stop.reason or "none")
            break
    ctx.watchdog.enter("final timing report")
    ctx.comm.gather((comm_s, decode_s), root=0)
