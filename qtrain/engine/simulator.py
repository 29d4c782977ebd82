"""The in-process simulator: N virtual workers and the server in one process, no MPI.

It drives the very same :class:`WorkerEngine`/:class:`ServerEngine` code as the MPI runtime, in
the same order (every worker encodes every segment; the server aggregates each segment in worker
order, runs its rule and encodes its downlink; every replica applies it), so for the same config and
seed on CPU the final parameters are bit-identical to ``mpiexec -n N+1 qtrain train``. All virtual
workers share one model replica: replicas are identical by construction, since every worker
applies the same downlink; their model buffers (BatchNorm statistics) are not, so the simulator
keeps each virtual worker's and swaps them into the replica around its forward pass, and combines
them as the MPI runtime does (``engine/buffers.py``). The :class:`Recorder` keeps the statistics,
trace and progress as it does for the MPI server.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from qtrain.engine.buffers import buffer_state, combine, has_buffers, load_buffers, sync_due
from qtrain.engine.checkpointer import Checkpointer
from qtrain.engine.divergence import check_loss
from qtrain.engine.recorder import Recorder, WorkerReport
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.snapshots import is_checkpoint_step, worker_snapshot
from qtrain.engine.topology import Topology
from qtrain.io.run_dir import params_sha256, prepare_out_dir, write_config, write_summary
from qtrain.kernels import set_threads as set_kernel_threads


def simulate(
    cfg, workers: int, out: str | Path | None, log=print, observe=None, overwrite: bool = False
) -> dict:
    """Run ``cfg`` with ``workers`` virtual workers; write ``OUT/config.yaml``, the trace, the
    checkpoints and ``OUT/summary.json`` when ``out`` is given; return the summary.
    ``observe(step, params, dataset)``, when given, sees the server's weights after every step
    (step 0: before training), read-only: how reproductions follow a quantity over training."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
        set_kernel_threads(cfg.runtime.threads)
    device = torch.device("cpu")
    plan, server_model = RunPlan.build(cfg, Topology.parameter_server(workers + 1), device)
    replica = plan.model(device)
    setup, part, ds = plan.setup, plan.partition, plan.setup.dataset
    out_dir = None
    if out is not None:
        out_dir, removed = prepare_out_dir(out, overwrite=overwrite)
        if removed:
            log(f"--overwrite: removed {removed} from {out_dir}")
    if out_dir is not None:
        write_config(out_dir, plan.config_text)
    server = plan.server_engine(server_model.params)
    engines = [plan.worker_engine(w, device) for w in range(workers)]
    samplers = [plan.sampler(w) for w in range(workers)]
    rec = Recorder(setup, plan.topology, part, log, out_dir, progress="lines")
    checkpointer = Checkpointer(out_dir, plan, "none (simulator)", ["simulator"]) if out_dir else None
    log(f"simulate: {plan.describe()}")
    for seg in part:
        initial = server.initial_message(seg)
        if initial is not None:
            rec.downlink(initial.numel(), seg)
            engines[0].apply_downlink(seg, initial, replica.params)

    if observe is not None:
        observe(0, server_model.params, ds)
    # each virtual worker's model buffers, swapped into the shared replica around its forward pass
    worker_buffers = (
        [buffer_state(replica.module) for _ in range(workers)] if has_buffers(replica.module) else None
    )
    for step in range(1, setup.steps + 1):
        rec.begin_step(step)
        server.begin_step()
        report = _empty_report(workers, len(part))
        uplinks = []
        for w, (engine, sampler) in enumerate(zip(engines, samplers, strict=True)):
            engine.begin_step()
            t0 = time.perf_counter()
            idx = sampler.next_batch()
            if worker_buffers is not None:
                load_buffers(replica.module, worker_buffers[w])
            report.loss[w] = replica.loss_and_grad(ds.x_train[idx], ds.y_train[idx], ds.task)
            if worker_buffers is not None:
                worker_buffers[w] = buffer_state(replica.module)
            check_loss(step, w, report.loss[w])
            t1 = time.perf_counter()
            uplinks.append([engine.make_uplink(seg, replica.grads, replica.params) for seg in part])
            report.compute_s[w], report.encode_s[w] = t1 - t0, time.perf_counter() - t1
            report.err_sq[w], report.ref_sq[w], report.ef_sq[w] = engine.stats.totals()
        t_apply = 0.0
        for seg in part:
            rec.uplinks([u[seg.index].numel() for u in uplinks], seg)
            with rec.phase("aggregate", seg):
                mean = server.aggregate(seg, [u[seg.index] for u in uplinks])
            with rec.phase("server_step", seg):
                down = server.make_downlink(seg, mean)
            rec.downlink(down.numel(), seg)
            t0 = time.perf_counter()
            engines[0].apply_downlink(seg, down, replica.params)  # the one shared replica
            t_apply += time.perf_counter() - t0
        report.decode_s[:] = t_apply  # no network in-process: comm_s stays 0
        buffers = None
        if worker_buffers is not None and sync_due(cfg, step, setup.steps, False):
            with rec.phase("buffers"):
                buffers = combine(cfg.model.buffers, worker_buffers)
                worker_buffers = [buffers] * workers  # read-only until replaced after a forward
                load_buffers(server_model.module, buffers)
        if rec.eval_due():
            rec.evaluate(server_model, ds)
        rec.end_step(report, server.last_stats)
        if observe is not None:
            observe(step, server_model.params, ds)
        if checkpointer is not None and is_checkpoint_step(cfg, step, setup.steps, False):
            snaps = [worker_snapshot(e, s) for e, s in zip(engines, samplers, strict=True)]
            rec.flush()
            checkpointer.write(step, server, snaps, rec, replica.params, buffers)
    rec.close()
    summary = rec.summary(server_model, ds, params_sha256(server_model.params), runner="simulate")
    if out_dir is not None:
        write_summary(out_dir, summary)
    return summary


def _empty_report(workers: int, segments: int) -> WorkerReport:
    z = [np.zeros(workers) for _ in range(8)]
    return WorkerReport(*z[:6], comm_s=z[6], decode_s=z[7])
