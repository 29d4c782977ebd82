"""A working rank: a loop over the step driver's worker step (``engine/step.py``) on its shard,
over the MPI transport; between steps it sends its buffers and, at checkpoint steps, its state
to the server."""

from __future__ import annotations

from qtrain.engine.buffers import has_buffers, load_buffers, sync_due
from qtrain.engine.snapshots import is_checkpoint_step, to_numpy, worker_restore, worker_snapshot
from qtrain.engine.step import WorkerStep
from qtrain.runtime.buffer_sync import worker_sync
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.faults import maybe_fail


def run_worker(plan, model, transport, svc, resume) -> None:
    topo, part, cfg, ds = plan.topology, plan.partition, plan.cfg, plan.setup.dataset
    engine = plan.worker_engine(topo.worker_index, model.device)
    sampler = plan.sampler(topo.worker_index)
    overlap, why = uses_overlap(cfg.runtime.overlap, model.device, thread_multiple())
    worker = WorkerStep(engine, model, transport, part, overlap, svc.watchdog.enter)
    start = _start(plan, model, engine, sampler, worker, svc, resume)
    svc.log.info(
        "overlap %s (%s): %d segment(s) sent %s",
        "on" if overlap else "off",
        why,
        len(part),
        "as backward completes each" if overlap else "after backward",
    )
    if timeline_wanted(cfg):
        clock_offsets(topo, cfg.runtime.timeout_s)  # the server maps our instants onto its clock
    sync_buffers = has_buffers(model.module)
    for step in range(start + 1, plan.setup.steps + 1):
        svc.watchdog.enter(f"step {step}: compute")
        maybe_fail(svc.fault, topo.rank, step)
        idx = sampler.next_batch()
        loss = worker.compute(step, ds.x_train[idx], ds.y_train[idx], ds.task, svc.stop.requested)
        stopping = worker.exchange(step)
        if step % cfg.train.log_every == 0:
            svc.log.info(
                "step %d loss %.5f compute %.4fs comm %.4fs", step, loss, worker.compute_s, worker.comm_s
            )
        if sync_buffers and sync_due(cfg, step, plan.setup.steps, stopping):
            svc.watchdog.enter(f"step {step}: buffers")
            worker_sync(topo, model.module)
        if is_checkpoint_step(cfg, step, plan.setup.steps, stopping):
            svc.watchdog.enter(f"step {step}: checkpoint gather")
            # with this step's communication times, which the trace would otherwise get one step late
            snapshot = to_numpy(worker_snapshot(engine, sampler))
            topo.comm.gather((snapshot, worker.comm_s, worker.decode_s), root=topo.server)
        if stopping:
            svc.log.info("stopping after step %d as agreed (local: %s)", step, svc.stop.reason or "none")
            break
    svc.watchdog.enter("final timing report")
    final = (worker.comm_s, worker.decode_s, worker.backward_end, worker.arrived, worker.applied)
    topo.comm.gather(final, root=topo.server)


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


def thread_multiple() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def _start(plan, model, engine, sampler, worker, svc, resume) -> int:
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
        worker.receive_initial()
    return 0
