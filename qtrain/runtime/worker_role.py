"""Ranks 1..K-1: compute gradients on the own shard, send compressed updates, apply the downlink."""

from __future__ import annotations

import time

import numpy as np

from qtrain.engine import WorkerEngine
from qtrain.engine.setup import build_flat_model, build_sampler
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.records import FLAG_SERVER_FAILED, FLAG_STOP, UPLINK_RECORD


def run_worker(ctx) -> None:
    setup, rank, log = ctx.setup, ctx.rank, ctx.log
    worker = rank - 1
    model = build_flat_model(setup, ctx.device)
    engine = WorkerEngine(
        setup.algorithm, setup.uplink, setup.downlink.codec, model.numel, ctx.device, setup.cfg.seed, worker
    )
    sampler = build_sampler(setup, worker)
    ds = setup.dataset
    x_train, y_train = ds.x_train, ds.y_train
    transport = ctx.transport
    if setup.algorithm.downlink_mode == "weights":
        ctx.watchdog.enter("initial weights broadcast")
        _, msg = transport.recv_downlink()
        engine.apply_downlink(msg, model.params)
    record = np.zeros(1, dtype=UPLINK_RECORD)
    comm_s = 0.0
    for step in range(1, setup.steps + 1):
        ctx.watchdog.enter(f"step {step}: compute")
        maybe_fail(ctx.fault, rank, step)
        t0 = time.perf_counter()
        idx = sampler.next_batch()
        loss = model.loss_and_grad(x_train[idx].to(ctx.device), y_train[idx].to(ctx.device), ds.task)
        t1 = time.perf_counter()
        ctx.watchdog.enter(f"step {step}: encode")
        packed = engine.make_uplink(model.grads, model.params)
        t2 = time.perf_counter()
        record["step"], record["loss"] = step, loss
        record["compute_s"], record["encode_s"], record["comm_s"] = t1 - t0, t2 - t1, comm_s
        record["rel_error"] = engine.last_stats.get("up_rel_error", 0.0)
        record["ef_norm"] = engine.last_stats.get("up_ef_norm", 0.0)
        record["flags"] = FLAG_STOP if ctx.stop.requested else 0
        ctx.watchdog.enter(f"step {step}: uplink/downlink")
        transport.send_uplink(record, packed)
        head, msg = transport.recv_downlink()
        comm_s = time.perf_counter() - t2
        if int(head["flags"]) & FLAG_SERVER_FAILED:
            raise RuntimeError("the server reported a failure")
        engine.apply_downlink(msg, model.params)
        if step % setup.cfg.train.log_every == 0:
            log.info(
                "step %d loss %.5f compute %.4fs encode %.4fs comm %.4fs",
                step,
                loss,
                t1 - t0,
                t2 - t1,
                comm_s,
            )
        if int(head["flags"]) & FLAG_STOP:
            log.info("stopping after step %d as agreed (local: %s)", step, ctx.stop.reason or "none")
            break
