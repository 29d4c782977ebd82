"""A working rank: compute gradients on its shard, send each segment compressed to its server,
apply the downlink segment by segment, send its state to the server at checkpoint steps."""

from __future__ import annotations

import time

import numpy as np

from qtrain.engine.buffers import has_buffers, load_buffers, sync_due
from qtrain.engine.divergence import check_loss
from qtrain.engine.readiness import SegmentReadiness
from qtrain.engine.snapshots import is_checkpoint_step, to_numpy, worker_restore, worker_snapshot
from qtrain.runtime.buffer_sync import worker_sync
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.records import FLAG_STOP, UPLINK_RECORD


def run_worker(plan, model, transport, svc, resume) -> None:
    topo, part, cfg, ds = plan.topology, plan.partition, plan.cfg, plan.setup.dataset
    engine = plan.worker_engine(topo.worker_index, model.device)
    sampler = plan.sampler(topo.worker_index)
    start = _start(plan, model, engine, sampler, transport, svc, resume)
    record = np.zeros(1, dtype=UPLINK_RECORD)
    overlap, why = uses_overlap(cfg.runtime.overlap, model.device, _thread_multiple())
    readiness = SegmentReadiness(model.layout, part)
    svc.log.info(
        "overlap %s (%s): %d segment(s) sent %s",
        "on" if overlap else "off",
        why,
        len(part),
        "as backward completes each" if overlap else "after backward",
    )
    comm_s = decode_s = 0.0
    if timeline_wanted(cfg):
        clock_offsets(topo, cfg.runtime.timeout_s)  # the server maps our instants onto its clock
    arrived, applied = np.zeros(len(part)), np.zeros(len(part))  # the last downlink, per segment
    backward_end = 0.0
    sync_buffers = has_buffers(model.module)
    for step in range(start + 1, plan.setup.steps + 1):
        svc.watchdog.enter(f"step {step}: compute")
        maybe_fail(svc.fault, topo.rank, step)
        engine.begin_step()
        t0 = time.perf_counter()
        idx = sampler.next_batch()
        record["step"], record["loss"], record["compute_s"] = step, np.nan, 0.0
        record["prev_comm_s"], record["prev_decode_s"] = comm_s, decode_s
        record["t_start"], record["prev_t_backward"] = t0, backward_end
        record["flags"] = FLAG_STOP if svc.stop.requested else 0
        sender = _SegmentSender(engine, model, transport, svc, record, step, t0, (arrived, applied))
        ready = None
        if overlap:  # encode and post each segment as soon as backward completes it
            readiness.begin()
            ready = sender.hook(readiness)
        loss = model.loss_and_grad(
            ds.x_train[idx].to(model.device),
            ds.y_train[idx].to(model.device),
            ds.task,
            ready,
            on_loss=lambda value: record.__setitem__("loss", value),
        )
        backward_end = time.perf_counter()
        check_loss(step, topo.worker_index, loss)
        t1 = backward_end - sender.busy_s  # forward + backward, without encodes inside it
        sender.send_all(readiness.rest() if overlap else list(part))
        t2 = time.perf_counter()
        decode_s, stopping = 0.0, False
        svc.watchdog.enter(f"step {step}: downlink")
        transport.post_downlinks(step)
        for seg, head, msg in transport.downlinks(step):  # as they complete
            td = arrived[seg.index] = time.perf_counter()
            engine.apply_downlink(seg, msg, model.params)
            applied[seg.index] = time.perf_counter()
            decode_s += applied[seg.index] - td
            stopping |= bool(int(head["flags"]) & FLAG_STOP)  # set on the server's last segment
            svc.watchdog.enter(f"step {step}: downlink")
        transport.finish_sends(step)
        comm_s = time.perf_counter() - t2 - decode_s
        if step % cfg.train.log_every == 0:
            svc.log.info("step %d loss %.5f compute %.4fs comm %.4fs", step, loss, t1 - t0, comm_s)
        if sync_buffers and sync_due(cfg, step, plan.setup.steps, stopping):
            svc.watchdog.enter(f"step {step}: buffers")
            worker_sync(topo, model.module)
        if is_checkpoint_step(cfg, step, plan.setup.steps, stopping):
            svc.watchdog.enter(f"step {step}: checkpoint gather")
            # with this step's communication times, which the trace would otherwise get one step late
            snapshot = to_numpy(worker_snapshot(engine, sampler))
            topo.comm.gather((snapshot, comm_s, decode_s), root=topo.server)
        if stopping:
            svc.log.info("stopping after step %d as agreed (local: %s)", step, svc.stop.reason or "none")
            break
    svc.watchdog.enter("final timing report")
    topo.comm.gather((comm_s, decode_s, backward_end, arrived, applied), root=topo.server)


def uses_overlap(setting: str, device, thread_multiple: bool) -> tuple[bool, str]:
    """``runtime.overlap`` (on, off or auto) for this worker: whether to send segments from the
    backward hooks, and why. Autograd runs a CPU backward's hooks on the thread that called
    backward, the one that talks MPI, so any thread level will do; a CUDA backward runs them on a
    device thread, which needs MPI_THREAD_MULTIPLE (``thread_multiple``: the library granted it).
    ``auto`` is on for CPU workers only; ``on`` falls back to sending after backward, with the
    reason, where the thread level is too low."""
    if setting == "off":
        return False, "runtime.overlap=off"
    if str(device) == "cpu":
        return True, "hooks run on the MPI thread (CPU backward)"
    if setting == "auto":
        return False, "auto: a CUDA backward runs hooks on a device thread"
    if not thread_multiple:
        return False, "runtime.overlap=on needs MPI_THREAD_MULTIPLE for a CUDA backward, not granted"
    return True, "runtime.overlap=on with MPI_THREAD_MULTIPLE"


def _thread_multiple() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


class _SegmentSender:
    """Encode a segment into its send frame and post it; keeps the per-step record current (the
    compute time up to this segment, its encode time and statistics)."""

    def __init__(self, engine, model, transport, svc, record, step: int, t0: float, downlink_times):
        self.engine, self.model, self.transport, self.svc = engine, model, transport, svc
        self.record, self.step, self.t0 = record, step, t0
        self.arrived, self.applied = downlink_times  # of the previous step, per segment
        self.busy_s = 0.0

    def hook(self, readiness):
        """The per-parameter callback of the backward pass: send what each parameter completes."""

        def ready(param: int) -> None:
            done = readiness.param_ready(param)
            if done:
                self.send_all(done)
                self.svc.watchdog.enter(f"step {self.step}: compute (backward)")

        return ready

    def send_all(self, segments) -> None:
        for seg in segments:
            te = time.perf_counter()
            self.svc.watchdog.enter(f"step {self.step}: encode + send (segment {seg.index})")
            rec = self.record
            rec["compute_s"] = te - self.t0 - self.busy_s
            rec["t_ready"] = te
            rec["prev_t_arrived"], rec["prev_t_applied"] = self.arrived[seg.index], self.applied[seg.index]
            packed = self.engine.make_uplink(
                seg, self.model.grads, self.model.params, out=self.transport.message_buffer(seg)
            )
            rec["encode_s"] = time.perf_counter() - te
            rec["err_sq"], rec["ref_sq"], rec["ef_sq"] = self.engine.stats.part(seg)
            rec["t_sent"] = time.perf_counter()
            self.transport.send_uplink(seg, rec, packed)
            self.transport.progress()
            self.busy_s += time.perf_counter() - te


def _start(plan, model, engine, sampler, transport, svc, resume) -> int:
    """Restore a resumed worker, or adopt the server's initial weights (weights mode); the step to
    continue after."""
    if resume is not None:
        model.params.copy_(resume.replica_params)
        if resume.buffers is not None:
            load_buffers(model.module, resume.buffers)
        if resume.worker is not None:
            worker_restore(resume.worker, engine, sampler)
        else:
            svc.log.info("--reset-worker-state: moments, error buffers and data position start from zero")
        svc.log.info("resumed at step %d", resume.step)
        return resume.step
    if plan.setup.algorithm.downlink_mode == "weights":
        svc.watchdog.enter("initial weights broadcast")
        transport.post_downlinks(0)
        for seg, _, msg in transport.downlinks(0):
            engine.apply_downlink(seg, msg, model.params)
    return 0
