"""The in-process simulator: N virtual workers and the server in one process, no MPI.

It drives the very same :class:`WorkerEngine`/:class:`ServerEngine` code as the MPI runtime, in
the same order (workers 0..N-1 produce uplinks, the server aggregates them in that order, every
replica applies the downlink), so for the same config and seed on CPU the final parameters are
bit-identical to ``mpiexec -n N+1 qtrain train``. All virtual workers share one model replica:
replicas are identical by construction, since every worker applies the same downlink.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from qtrain.config import dump_yaml
from qtrain.engine.accounting import RunStats, trace_attrs
from qtrain.engine.server import ServerEngine
from qtrain.engine.setup import build_flat_model, build_sampler, build_setup, resolved_config
from qtrain.engine.snapshots import checkpoint_contents, is_checkpoint_step, worker_snapshot
from qtrain.engine.worker import WorkerEngine
from qtrain.io.checkpoint import checkpoint_name, prune, write_checkpoint
from qtrain.io.run_dir import params_sha256, prepare_out_dir, write_config, write_summary
from qtrain.io.trace import TraceWriter, server_row, worker_rows


def _format_eval(step: int, steps: int, loss: float, ev: dict, stats: RunStats) -> str:
    acc = f" test_acc {ev['accuracy']:.4f}" if "accuracy" in ev else ""
    return (
        f"step {step}/{steps} batch_loss {loss:.4f} test_loss {ev['loss']:.4f}{acc} "
        f"up {stats.bytes_up / max(stats.messages_up, 1):.0f} B/msg "
        f"down {stats.bytes_down / max(stats.messages_down, 1):.0f} B/msg"
    )


def simulate(cfg, workers: int, out: str | Path | None, log: Callable[[str], None] = print) -> dict:
    """Run ``cfg`` with ``workers`` virtual workers; write ``OUT/config.yaml`` and ``OUT/summary.json``
    when ``out`` is given; return the summary."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = torch.device("cpu")
    setup = build_setup(cfg, workers)
    out_dir = prepare_out_dir(out) if out is not None else None
    config_text = dump_yaml(resolved_config(cfg, setup))
    if out_dir is not None:
        write_config(out_dir, config_text)
    ds = setup.dataset
    server_model = build_flat_model(setup, device)
    replica = build_flat_model(setup, device)
    server = ServerEngine(setup.algorithm, setup.uplink.codec, setup.downlink, server_model.params, cfg.seed)
    engines = [
        WorkerEngine(setup.algorithm, setup.uplink, setup.downlink.codec, replica.numel, device, cfg.seed, w)
        for w in range(workers)
    ]
    samplers = [build_sampler(setup, w) for w in range(workers)]
    stats = RunStats(replica.numel, workers)
    log(
        f"simulate: {setup.algorithm.name}, {workers} workers, {setup.steps} steps, "
        f"{replica.numel} parameters; "
        f"uplink {setup.uplink.describe()}; downlink {setup.downlink.describe()}"
    )

    trace = None
    if out_dir is not None and cfg.trace.enabled:
        trace = TraceWriter(
            out_dir / "trace.h5", trace_attrs(setup, replica.numel, workers + 1), cfg.trace.flush_every
        )

    initial = server.initial_message()
    if initial is not None:
        stats.add_downlink(initial.numel())
        engines[0].apply_downlink(initial, replica.params)

    for step in range(1, setup.steps + 1):
        messages, losses, compute, encode = [], [], [], []
        for engine, sampler in zip(engines, samplers, strict=True):
            t0 = time.perf_counter()
            idx = sampler.next_batch()
            losses.append(replica.loss_and_grad(ds.x_train[idx], ds.y_train[idx], ds.task))
            t1 = time.perf_counter()
            messages.append(engine.make_uplink(replica.grads, replica.params))
            compute.append(t1 - t0)
            encode.append(time.perf_counter() - t1)
        sizes = [m.numel() for m in messages]
        stats.add_uplinks(sizes)
        t2 = time.perf_counter()
        mean = server.aggregate(messages)
        t3 = time.perf_counter()
        downlink = server.make_downlink(mean)
        t4 = time.perf_counter()
        stats.add_downlink(downlink.numel())
        engines[0].apply_downlink(downlink, replica.params)  # the one shared replica
        t5 = time.perf_counter()
        stats.last_batch_loss = sum(losses) / len(losses)
        eval_s = 0.0
        if step % cfg.train.eval_every == 0 or step == setup.steps:
            ev = server_model.evaluate(ds.x_test, ds.y_test, ds.task)
            eval_s = time.perf_counter() - t5
            stats.add_eval(step, ev, trace)
            log(_format_eval(step, setup.steps, stats.last_batch_loss, ev, stats))
        elif step % cfg.train.log_every == 0:
            log(f"step {step}/{setup.steps} batch_loss {stats.last_batch_loss:.4f}")
        if trace is not None:
            errors = [e.last_stats.get("up_rel_error", 0.0) for e in engines]
            efs = [e.last_stats.get("up_ef_norm", 0.0) for e in engines]
            times = {"decode_s": t3 - t2, "encode_s": t4 - t3, "compute_s": eval_s}
            trace.add_rows(
                server_row(
                    step,
                    sizes,
                    downlink.numel(),
                    workers,
                    times,
                    stats.last_batch_loss,
                    errors,
                    efs,
                    server.last_stats,
                )
            )
            rows = worker_rows(
                step, sizes, downlink.numel(), compute, encode, losses, errors, efs, server.last_stats
            )
            rows["decode_s"] = t5 - t4  # no network in-process: comm_s and wait_s stay 0
            trace.add_rows(rows)
            trace.maybe_flush(step)
        if out_dir is not None and is_checkpoint_step(cfg, step, setup.steps, False):
            ckpt_dir = out_dir / "checkpoints"
            ckpt_dir.mkdir(exist_ok=True)
            snaps = [worker_snapshot(e, smp) for e, smp in zip(engines, samplers, strict=True)]
            tree, meta = checkpoint_contents(
                step,
                server_model.params,
                replica.params,
                server_model.layout,
                config_text,
                server,
                snaps,
                stats,
                setup,
                "none (simulator)",
                ["simulator"],
            )
            write_checkpoint(ckpt_dir / checkpoint_name(step), tree, meta)
            prune(ckpt_dir, cfg.checkpoint.keep)
    if trace is not None:
        trace.close()

    final = server_model.evaluate(ds.x_test, ds.y_test, ds.task)
    train = server_model.evaluate(ds.x_train, ds.y_train, ds.task)
    summary = stats.summary(
        setup, setup.steps, final, train, params_sha256(server_model.params), runner="simulate"
    )
    if out_dir is not None:
        write_summary(out_dir, summary)
    return summary
