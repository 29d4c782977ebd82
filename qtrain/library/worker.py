"""A worker's side of a library run: the user's loop drives the step driver's worker step
(``engine/step.py``) through :class:`~qtrain.library.optimizer.DistributedOptimizer`.

A step begins at the first gradient hook (or at ``step()``): the engines count the step and, with
overlap, backward's hooks encode and post each segment as it completes, exactly as ``qtrain train``
does. ``step()`` posts the segments left, applies the downlink and learns whether every rank agreed
to stop. Between two steps the worker may send the server a control frame (``engine/records.py``):
a checkpoint, a buffer synchronisation, or the end of its loop; the server acts on it before the
next step. The learning rate of the optimizer's param group travels with every step's records."""

from __future__ import annotations

import time

import torch

from qtrain.engine.buffers import buffer_state, has_buffers, load_buffers
from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.snapshots import rng_restore, rng_snapshot, to_cpu, to_numpy
from qtrain.engine.step import WorkerStep
from qtrain.library import extra_state
from qtrain.library.errors import UsageError
from qtrain.runtime.buffer_sync import worker_sync
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.faults import maybe_fail


class LibraryWorker:
    def __init__(self, session, flat, plan, engine, transport, overlap: bool, resume):
        self.session, self.flat, self.plan, self.engine = session, flat, plan, engine
        self.svc, self.topology = session._svc, plan.topology
        self.overlap = overlap
        self.driver = WorkerStep(engine, flat, transport, plan.partition, overlap, self.svc.watchdog.enter)
        self.lr = engine.algorithm.hp.lr  # the starting learning rate (a resume restores it)
        self.lr_of = None  # the optimizer's param group, once it exists: each step's learning rate
        self.driver.lr_source = self.current_lr
        self.steps_done = 0
        self.begun = self.backward_seen = self.accumulating = False
        self.sent_version: int | None = None  # the gradient's version once overlap sent all of it
        self.stopping = False
        self.metrics: list[tuple[int, str, float]] = []
        self.closed = False
        if resume is not None:
            self._restore(resume)
        elif plan.setup.algorithm.downlink_mode == "weights":
            self.svc.watchdog.enter("initial weights broadcast")
            self.driver.receive_initial()
        if timeline_wanted(plan.cfg):
            clock_offsets(self.topology, plan.cfg.runtime.timeout_s)
        self.t_end = time.perf_counter()
        flat._on_param_ready = self._on_param_ready  # the hooks report every parameter, every backward
        self._enter_loop()

    # ------------------------------------------------------------------ the step
    def current_lr(self) -> float:
        return self.lr_of() if self.lr_of is not None else self.lr

    def _enter_loop(self) -> None:
        self.svc.watchdog.enter(f"your loop, after step {self.steps_done}")

    def begin(self) -> None:
        if not self.begun:
            self.begun = True
            self.driver.begin(self.steps_done + 1, self.svc.stop.requested, t0=self.t_end)

    def _on_param_ready(self, index: int) -> None:
        self.backward_seen = True
        self.begin()
        if not self.overlap or self.accumulating:
            return
        step = self.steps_done + 1
        if self.sent_version is not None:
            raise UsageError(
                f"step {step}: a second backward() after backward had sent the step's gradient (overlap is "
                "on): run the first micro-batches of gradient accumulation inside "
                "`with optimizer.no_sync():`, or create the optimizer with overlap=False"
            )
        self.driver._param_ready(index)
        if all(self.driver.readiness.sent):
            self.sent_version = self.flat.grads._version

    def set_loss(self, loss) -> None:
        self.begin()
        self.driver.record["loss"] = float(loss)

    def step(self, loss=None, found_inf=None, grad_scale=None) -> bool:
        """Exchange this step with the server; whether every rank agreed to stop."""
        step = self.steps_done + 1
        maybe_fail(self.svc.fault, self.topology.rank, step)
        why = self.flat.changed_parameter()
        if why:
            raise UsageError(
                f"step {step}: {why} after session.optimizer(model); its flat buffers keep the parameters of "
                "that call (change the model and move it to session.device before creating the optimizer)"
            )
        if not self.backward_seen:
            raise UsageError(
                f"step {step}: optimizer.step() without a backward pass since the last step "
                "(call loss.backward() or optimizer.backward(loss) first)"
            )
        if self.sent_version is not None and self.flat.grads._version != self.sent_version:
            raise UsageError(
                f"step {step}: the gradient changed after backward had sent it (overlap is on: gradient "
                "clipping, GradScaler.unscale_ or another backward between backward() and step()); "
                "create the optimizer with overlap=False (or set runtime.overlap=off) to change "
                "gradients before step()"
            )
        grads = self.flat.grads
        if grad_scale is not None or (found_inf is not None and float(found_inf)):
            if self.sent_version is not None:
                raise UsageError(
                    f"step {step}: a GradScaler needs the optimizer created with overlap=False (overlap sent "
                    "the scaled gradient during backward)"
                )
            if grad_scale is not None:  # GradScaler.step without unscale_: unscale as it would
                grads.mul_(grad_scale.double().reciprocal().float().to(grads.device))
            if found_inf is not None and float(found_inf):
                # one worker cannot skip a step the others take: it contributes a zero gradient
                grads.zero_()
                self.svc.log.info("step %d: non-finite scaled gradient, this worker contributes zero", step)
        if loss is not None:
            self.set_loss(loss)
        value = float(self.driver.record["loss"][0])
        self.driver.end_backward(None if value != value else value)
        stopping = self.driver.exchange(step)
        self.steps_done = step
        self.begun = self.backward_seen = False
        self.sent_version = None
        self.t_end = time.perf_counter()
        if stopping and not self.stopping:
            self.stopping = True
            self.svc.log.info("stop agreed after step %d (local: %s)", step, self.svc.stop.reason or "none")
        log_every = self.plan.cfg.train.log_every
        if step % log_every == 0:
            self.svc.log.info(
                "step %d loss %.5f compute %.4fs comm %.4fs",
                step,
                value,
                self.driver.compute_s,
                self.driver.comm_s,
            )
        self._enter_loop()
        return self.stopping

    # ------------------------------------------------------------------ between steps
    def _between_steps(self, what: str) -> int:
        if self.begun or self.backward_seen:
            raise UsageError(
                f"{what} between backward() and optimizer.step() (step {self.steps_done + 1}): "
                "call it after step()"
            )
        return self.steps_done

    def checkpoint(self, extra) -> None:
        step = self._between_steps("session.checkpoint()")
        if step == 0:
            raise UsageError(
                "session.checkpoint() before the first optimizer.step(): there is nothing to save yet"
            )
        packed = extra_state.pack(extra) if extra is not None else None  # refused before anything is sent
        self.svc.watchdog.enter(f"step {step}: checkpoint")
        self.driver.send_control(step + 1, FLAG_CHECKPOINT)
        snapshot = to_numpy(self._snapshot(packed))
        self.topology.comm.gather(
            (snapshot, self.driver.comm_s, self.driver.decode_s, self._take_metrics()),
            root=self.topology.server,
        )
        self._enter_loop()

    def sync_buffers(self) -> None:
        step = self._between_steps("session.sync_buffers()")
        if not has_buffers(self.flat.module):
            return
        self.svc.watchdog.enter(f"step {step}: buffers")
        self.driver.send_control(step + 1, FLAG_BUFFERS)
        self._sync_buffers()
        self._enter_loop()

    def close(self) -> None:
        """The end of this worker's loop: the server ends the run once every worker has closed."""
        if self.closed:
            return
        self.closed = True
        step = self.steps_done
        self.svc.watchdog.enter(f"end after step {step}")
        self.flat._on_param_ready = None
        self.driver.send_control(step + 1, FLAG_END)
        self._sync_buffers()
        self.svc.watchdog.enter("final timing report")
        d = self.driver
        final = (d.comm_s, d.decode_s, d.backward_end, d.arrived, d.applied, self._take_metrics())
        self.topology.comm.gather(final, root=self.topology.server)

    def _sync_buffers(self) -> None:
        if has_buffers(self.flat.module):
            worker_sync(self.topology, self.flat.module)

    def log(self, metrics: dict) -> None:
        step = self.steps_done
        for name, value in metrics.items():
            try:
                number = float(value.item() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError, RuntimeError):
                raise UsageError(f"session.log({name}=...): {type(value).__name__} is not a number") from None
            self.metrics.append((step, name, number))

    def _take_metrics(self) -> list:
        rows, self.metrics = self.metrics, []
        return rows

    # ------------------------------------------------------------------ checkpoints
    def _snapshot(self, packed_extra) -> dict:
        snap = {
            "engine": self.engine.state_dict(),
            "shards": {str(i): s.state_dict() for i, s in enumerate(self.session._shards)},
            "rng": rng_snapshot(),
            "lr": float(self.current_lr()),
        }
        if has_buffers(self.flat.module):  # this replica's own: a checkpoint changes nothing
            snap["buffers"] = buffer_state(self.flat.module)
        if packed_extra is not None:
            snap["extra"] = packed_extra
        return to_cpu(snap)

    def _restore(self, resume) -> None:
        self.flat.params.copy_(resume.replica_params)
        if resume.buffers is not None:
            load_buffers(self.flat.module, resume.buffers)
        self.steps_done = resume.step
        w = resume.worker
        if w is None:
            self.svc.log.info("--reset-worker-state: moments and error buffers start from zero")
            return
        if "shards" not in w:
            raise UsageError(
                f"the checkpoint of step {resume.step} was written by qtrain train, not by the library"
            )
        self.engine.load_state_dict(w["engine"])
        if "buffers" in w:
            load_buffers(self.flat.module, w["buffers"])
        rng_restore(w["rng"])
        self.lr = float(w["lr"])
        self.session._resume_shards([w["shards"][k] for k in sorted(w["shards"], key=int)])
        self.session._resumed_extra = extra_state.unpack(w["extra"]) if "extra" in w else None
        self.svc.log.info("resumed at step %d", resume.step)
