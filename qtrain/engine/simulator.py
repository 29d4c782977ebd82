"""The in-process simulator: N virtual workers and the server in one process, no MPI.

It runs the step driver (``engine/step.py``) that the MPI roles run, over the in-process channel
(``engine/channel.py``): every virtual worker computes and posts every segment; the server takes
each segment, averages it in worker order, runs its rule and posts its downlink; every worker
applies it. So for the same config and seed on CPU the final parameters are bit-identical to
``mpiexec -n N+1 qtrain train``. Each virtual worker has its own replica of the model, which starts
from the server's parameters and buffers as an MPI worker does; the replicas' parameters stay
identical (every worker applies the same downlink), their buffers (BatchNorm statistics) do not
and are combined as under MPI (``engine/buffers.py``). The :class:`Recorder` keeps the statistics,
trace and progress as it does for the MPI server.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qtrain.engine.buffers import buffer_state, checkpoint_buffers, combine, has_buffers, load_buffers
from qtrain.engine.channel import InProcessChannel
from qtrain.engine.checkpointer import Checkpointer
from qtrain.engine.memory_estimate import describe_estimate, estimate
from qtrain.engine.recorder import Recorder
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.snapshots import is_checkpoint_step, worker_snapshot
from qtrain.engine.step import ServerStep, WorkerStep, worker_report
from qtrain.engine.topology import Topology
from qtrain.io.run_dir import params_sha256, prepare_out_dir, write_config, write_summary
from qtrain.kernels import set_threads as set_kernel_threads
from qtrain.memory import require_fits


def _simulator_device(cfg) -> torch.device:
    """The CPU: the simulator runs the servers and every virtual worker there (``auto`` means the
    CPU here). A config that names a GPU is refused, not run on the CPU under a config.yaml that
    says it ran on the GPU."""
    for key, setting in (
        ("runtime.device", cfg.runtime.device),
        ("runtime.server_device", cfg.runtime.server_device),
    ):
        if setting not in ("auto", "cpu"):
            raise ValueError(
                f"{key}={setting}: qtrain simulate runs every virtual worker and the server on the CPU; "
                f"set {key}=cpu, or train on GPUs with mpiexec ... qtrain train"
            )
    return torch.device("cpu")


def simulate(
    cfg,
    workers: int,
    out: str | Path | None,
    log=print,
    observe=None,
    overwrite: bool = False,
    phase=lambda name: None,
    stop=lambda: None,
) -> dict:
    """Run ``cfg`` with ``workers`` virtual workers; write ``OUT/config.yaml``, the trace, the
    checkpoints and ``OUT/summary.json`` when ``out`` is given; return the summary.
    ``observe(step, params, dataset)``, when given, sees the server's weights after every step
    (step 0: before training), read-only: how reproductions follow a quantity over training.
    ``phase(name)`` is told what the run does next (``qtrain simulate``'s watchdog holds each
    phase to ``runtime.timeout_s``, as MPI runs do). ``stop()`` returns a reason to stop (a
    Ctrl-C) or None, asked at each step's server part: a stop ends the run after that step as an
    MPI run's agreed stop does (evaluation, checkpoint, summary with ``stopped_early``)."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
        set_kernel_threads(cfg.runtime.threads)
    device = _simulator_device(cfg)
    servers = cfg.runtime.servers  # K in-process serving ranks, each with its shard's engine
    topology = Topology.parameter_server(workers + servers, servers=servers)
    plan, server_model = RunPlan.build(cfg, topology, device)
    setup, part, ds = plan.setup, plan.partition, plan.setup.dataset
    worker_need, server_need = estimate(setup, part, workers)
    require_fits(  # one process holds every virtual worker and the servers
        workers * worker_need + servers * server_need,
        f"the simulator ({workers} workers and {'the server' if servers == 1 else f'{servers} servers'} "
        f"in one process, {part.numel} parameters)",
    )
    replicas = [plan.model(device) for _ in range(workers)]
    sync_buffers = has_buffers(server_model.module)
    initial_buffers = buffer_state(server_model.module)
    for replica in replicas:  # what every MPI worker adopts from the serving rank
        replica.params.copy_(server_model.params)
        load_buffers(replica.module, initial_buffers)
    out_dir = None
    if out is not None:
        out_dir, removed = prepare_out_dir(out, overwrite=overwrite)
        if removed:
            log(f"--overwrite: removed {removed} from {out_dir}")
    if out_dir is not None:
        write_config(out_dir, plan.config_text)
    server = plan.server_engine(server_model.params)
    channel = InProcessChannel(part, workers)
    workers_ = [
        WorkerStep(plan.worker_engine(w, device), replicas[w], channel.worker(w), part)
        for w in range(workers)
    ]
    samplers = [plan.sampler(w) for w in range(workers)]
    rec = Recorder(setup, plan.topology, part, log, out_dir, progress="lines")
    server_step = ServerStep(
        server,
        channel,
        part,
        rec,
        wants_buffers=lambda step, stopping: sync_buffers and rec.eval_due(stopping),
        decide_stop=lambda records: stop(),
    )
    checkpointer = Checkpointer(out_dir, plan, "none (simulator)", ["simulator"]) if out_dir else None
    log(f"simulate: {plan.describe()}; {describe_estimate(setup, part, workers)}")
    server_step.send_initial()
    for w in workers_:
        w.receive_initial()
    if observe is not None:
        observe(0, server_model.params, ds)
    stop_reason = None
    for step in range(1, setup.steps + 1):
        for i, (w, sampler) in enumerate(zip(workers_, samplers, strict=True)):
            phase(f"step {step}: worker {i}'s forward and backward")
            idx = sampler.next_batch()
            w.compute(step, ds.x_train[idx], ds.y_train[idx], ds.task)
        phase(f"step {step}: the server")
        result = server_step.run(step)
        stopping = result.stop_reason is not None
        for w in workers_:
            w.exchange(step)
        if result.buffers:  # the server evaluates now: every replica adopts the combination
            with rec.phase("buffers"):
                combined = combine(cfg.model.buffers, [buffer_state(r.module) for r in replicas])
                for model in (*replicas, server_model):
                    load_buffers(model.module, combined)
        if rec.eval_due(stopping):
            phase(f"step {step}: evaluation")
            rec.evaluate(server_model, ds)
        rec.end_step(worker_report(result.records), server.last_stats)
        if observe is not None:
            observe(step, server_model.params, ds)
        if checkpointer is not None and is_checkpoint_step(cfg, step, setup.steps, stopping):
            phase(f"step {step}: checkpoint")
            own = [buffer_state(r.module) if sync_buffers else None for r in replicas]
            snaps = [
                worker_snapshot(w.engine, [s.state_dict()], w.base_lrs, b)
                for w, s, b in zip(workers_, samplers, own, strict=True)
            ]
            buffers = (
                checkpoint_buffers(cfg.model.buffers, own, server_model.module) if sync_buffers else None
            )
            rec.complete_held_rows(
                [w.comm_s for w in workers_], [w.decode_s for w in workers_]
            )  # a resumed run finds this step's rows
            rec.flush()
            checkpointer.write(step, server, snaps, rec, replicas[0].params, buffers)
        if stopping:
            stop_reason = result.stop_reason
            log(f"stop after step {step}: {stop_reason}")
            break
    phase("the final evaluation, trace and summary")
    rec.close([w.comm_s for w in workers_], [w.decode_s for w in workers_])
    summary = rec.summary(
        server_model,
        ds,
        params_sha256(server_model.params),
        runner="simulate",
        stopped_early=stop_reason is not None,
        stop_reason=stop_reason,
    )
    if out_dir is not None:
        write_summary(out_dir, summary)
    return summary
