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
from qtrain.engine.records import FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.serving_loop import serve_steps
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
    if cfg.runtime.colocated:  # every virtual worker also owns 1/N of the segments
        topology = Topology.colocated_ranks(workers)
    else:  # K in-process serving ranks, each with its shard's engine
        topology = Topology.parameter_server(
            workers + int(cfg.runtime.servers), servers=int(cfg.runtime.servers)
        )
    servers = len(topology.servers)
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
    peers = _VirtualWorkers(workers_, samplers, ds, cfg, setup.steps, checkpointer is not None, phase)
    role = _Simulated(
        server, server_model, sync_buffers, replicas, peers, rec, checkpointer, cfg, ds, phase, log, observe
    )
    served = serve_steps(server_step, role, 0, peers)
    phase("the final evaluation, trace and summary")
    rec.close([w.comm_s for w in workers_], [w.decode_s for w in workers_])
    summary = rec.summary(
        server_model,
        ds,
        params_sha256(server_model.params),
        runner="simulate",
        stopped_early=served.stop_reason is not None,
        stop_reason=served.stop_reason,
    )
    if out_dir is not None:
        write_summary(out_dir, summary)
    return summary


class _VirtualWorkers:
    """The simulator's workers, one after another in this process (the loop's ``Peers``): each
    step every one computes and posts its uplinks, or every one sends the control frame an MPI
    worker's loop sends in their place (a checkpoint where ``checkpoint.every``, the last step or
    an agreed stop asks for one; the end after the last step or an agreed stop)."""

    def __init__(self, workers: list, samplers: list, ds, cfg, steps: int, checkpoints: bool, phase):
        self.workers, self.samplers, self.ds, self.cfg = workers, samplers, ds, cfg
        self.steps, self.checkpoints, self.phase = steps, checkpoints, phase
        self.done, self.stopping, self.checkpoint_due = 0, False, False

    def produce(self, step: int) -> None:
        if self.checkpoint_due:
            self.checkpoint_due = False
            self._control(step, FLAG_CHECKPOINT)
        elif self.done == self.steps or self.stopping:
            self._control(step, FLAG_END)
        else:
            for i, (w, sampler) in enumerate(zip(self.workers, self.samplers, strict=True)):
                self.phase(f"step {step}: worker {i}'s forward and backward")
                idx = sampler.next_batch()
                w.compute(step, self.ds.x_train[idx], self.ds.y_train[idx], self.ds.task)
            self.phase(f"step {step}: the server")

    def consume(self, step: int) -> None:
        for w in self.workers:
            self.stopping = w.exchange(step)
        self.done = step
        self.checkpoint_due = self.checkpoints and is_checkpoint_step(
            self.cfg, step, self.steps, self.stopping
        )

    def _control(self, step: int, flag: int) -> None:
        for w in self.workers:
            w.send_control(step, flag)


class _Simulated:
    """The simulator's server between steps (``engine/serving_loop.BetweenSteps``): the replicas'
    buffers, evaluation, the step's trace rows, ``observe``, checkpoints of every virtual worker."""

    def __init__(
        self, server, server_model, buffered, replicas, peers, rec, checkpointer, cfg, ds, phase, log, observe
    ):
        self.server, self.server_model, self.replicas, self.peers = server, server_model, replicas, peers
        self.rec, self.checkpointer, self.cfg, self.ds = rec, checkpointer, cfg, ds
        self.phase, self.log, self.observe = phase, log, observe
        self.buffered = buffered  # the model has buffers to combine (engine/buffers.py)

    def sync_buffers(self, step: int) -> None:
        with self.rec.phase("buffers"):  # every replica and the server adopt the combination
            combined = combine(self.cfg.model.buffers, [buffer_state(r.module) for r in self.replicas])
            for model in (*self.replicas, self.server_model):
                load_buffers(model.module, combined)

    def after_step(self, step: int, result) -> None:
        rec = self.rec
        if result.buffers:  # the server evaluates now: every replica adopts the combination
            self.sync_buffers(step)
        if rec.eval_due(result.stop_reason is not None):
            self.phase(f"step {step}: evaluation")
            rec.evaluate(self.server_model, self.ds)
        rec.end_step(worker_report(result.records), self.server.last_stats)
        if self.observe is not None:
            self.observe(step, self.server_model.params, self.ds)

    def checkpoint(self, step: int) -> None:
        self.phase(f"step {step}: checkpoint")
        workers, samplers = self.peers.workers, self.peers.samplers
        own = [buffer_state(r.module) if self.buffered else None for r in self.replicas]
        snaps = [
            worker_snapshot(w.engine, [s.state_dict()], w.base_lrs, b)
            for w, s, b in zip(workers, samplers, own, strict=True)
        ]
        buffers = None
        if self.buffered:
            buffers = checkpoint_buffers(self.cfg.model.buffers, own, self.server_model.module)
        # a resumed run finds this step's rows
        self.rec.complete_held_rows([w.comm_s for w in workers], [w.decode_s for w in workers])
        self.rec.flush()
        self.checkpointer.write(step, self.server, snaps, self.rec, self.replicas[0].params, buffers)

    def stop_agreed(self, step: int, reason: str) -> None:
        self.log(f"stop after step {step}: {reason}")
