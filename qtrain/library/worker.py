"""A worker's side of a library run: the user's loop drives the step driver's worker step
(``engine/step.py``) through :class:`~qtrain.library.optimizer.DistributedOptimizer`.

A step begins at the first gradient hook (or at ``step()``): the engines count the step and, with
overlap, backward's hooks encode and post each segment as it completes, exactly as ``qtrain train``
does. ``step()`` posts the segments left, applies the downlink and learns whether every rank agreed
to stop. Between two steps the worker may send the server a control frame (``engine/records.py``):
a checkpoint, a buffer synchronisation, or the end of its loop; the server acts on it before the
next step. The learning rate of every param group of the optimizer travels with every step's
records, and so does the norm ``clip_grad_norm_`` asks the serving ranks to clip the mean to."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from qtrain.engine.buffers import buffer_state, has_buffers, load_buffers
from qtrain.engine.flat import FlatModel
from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
from qtrain.engine.reports import CheckpointReport, FinalReport, Metric
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.snapshots import rng_restore, snapshot_lrs, to_numpy, worker_positions, worker_snapshot
from qtrain.engine.step import WorkerStep
from qtrain.engine.worker import WorkerEngine
from qtrain.io.live_metrics import LiveMetrics
from qtrain.io.trace import METRIC_NAME_BYTES
from qtrain.library import extra_state
from qtrain.library.errors import UsageError
from qtrain.runtime.buffer_sync import worker_sync
from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
from qtrain.runtime.faults import maybe_fail
from qtrain.runtime.resume import ResumePoint
from qtrain.runtime.transport import WorkerTransport

if TYPE_CHECKING:
    from qtrain.library.session import Session


class LibraryWorker:
    def __init__(
        self,
        session: Session,
        flat: FlatModel,
        plan: RunPlan,
        engine: WorkerEngine,
        transport: WorkerTransport,
        overlap: bool,
        resume: ResumePoint | None,
    ):
        self.session, self.flat, self.plan, self.engine = session, flat, plan, engine
        self.svc, self.topology = session._svc, plan.topology
        self.overlap, self.transport = overlap, transport
        self.driver = WorkerStep(engine, flat, transport, plan.partition, overlap, self.svc.watchdog.enter)
        self.lrs = list(engine.groups.base_lrs)  # every group's starting rate (a resume restores them)
        # the optimizer's param groups, once it exists: each step's learning rates
        self.lr_of: Callable[[], list[float]] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending_lrs: list | None = None  # a resume's learning rates, for the first step's rule
        self.initial_lrs: list | None = None  # a resume's ``initial_lr`` (torch schedulers read it)
        self.driver.lr_source = self.current_lrs
        self.clip_warned = False
        self.steps_done = 0
        self.begun = self.backward_seen = self.accumulating = self.warned_loss = False
        self.stopping = False
        self.metrics: list[Metric] = []
        trace = plan.cfg.trace  # session.log numbers also go to this rank's live files at once
        resumed_at = resume.step if resume is not None else None  # its files keep the rows up to it
        self.live = LiveMetrics(session.out_dir, self.topology.rank, trace.csv, trace.tensorboard, resumed_at)
        self.closed = False
        # the step in progress (begin() sets them anew every step)
        self.loss_given = False
        self.loss_scale: float | None = None
        self.clip_out: torch.Tensor | None = None  # what clip_grad_norm_ returned: the mean's norm, later
        self.clip_error = False
        self.hook_lr: list[float] = []  # the step's learning rates when backward's hooks sent it
        if resume is not None:
            self._restore(resume)
        elif plan.setup.algorithm.downlink_mode == "weights":
            self.svc.watchdog.enter("initial weights broadcast")
            self.driver.receive_initial()
        if timeline_wanted(plan.cfg):
            clock_offsets(self.topology, plan.cfg.runtime.timeout_s)
        self.t_end = time.perf_counter()
        # the hooks report every parameter, every backward (FlatModel declares the attribute None:
        # engine/flat.py sets it for its own backward only)
        flat._on_param_ready = self._on_param_ready  # type: ignore[assignment]
        self._enter_loop()

    # ------------------------------------------------------------------ the step
    def current_lrs(self) -> list[float]:
        return self.lr_of() if self.lr_of is not None else self.lrs

    def groups_lrs(self) -> list[float]:
        """The learning rates the optimizer's groups start with (a resume's, else the groups')."""
        return list(self.lrs)

    def _enter_loop(self) -> None:
        self.svc.watchdog.enter(f"your loop, after step {self.steps_done}")

    def begin(self) -> None:
        if not self.begun:
            maybe_fail(self.svc.fault, self.topology.rank, self.steps_done + 1)  # before the step sends
            self.begun = True
            self.hook_sent = False  # a segment of this step went out from backward's hooks
            self.hook_version = -1  # the gradient's version after the last hook of the step
            self.reported = bytearray(len(self.flat.layout))  # parameters reported since begin
            self.loss_given, self.loss_scale = False, None
            self.driver.max_norm = 0.0  # clip_grad_norm_ asks for it anew every step
            self.clip_out = None
            self.driver.begin(self.steps_done + 1, self.svc.stop.requested, t0=self.t_end)

    def _on_param_ready(self, index: int) -> None:
        if self.closed:
            return
        self.backward_seen = True
        self.begin()
        if self.overlap and not self.accumulating:
            step = self.steps_done + 1
            if self.reported[index]:
                raise UsageError(
                    f"step {step}: parameter {self.flat.layout[index][0]} got its gradient twice in one step "
                    "with overlap on (a second backward(), or reentrant activation checkpointing): run the "
                    "first micro-batches of gradient accumulation inside `with optimizer.no_sync():`, use "
                    "checkpoint(..., use_reentrant=False), or create the optimizer with overlap=False"
                )
            self.reported[index] = 1
            if self.driver._param_ready(index) and not self.hook_sent:
                self.hook_sent, self.hook_lr = True, self.current_lrs()  # the step's rates are fixed now
        self.hook_version = self.flat.grads._version

    def set_loss(self, loss: float | torch.Tensor, scale: float | None = None) -> None:
        """The step's loss; ``scale``: the GradScaler factor it may carry (``optimizer.backward``
        of ``scaler.scale(loss)``), divided out at ``step()`` when a GradScaler drove the step."""
        self.begin()
        self.loss_given = True
        self.loss_scale = scale
        self.driver.record["loss"] = float(loss)

    def clip(self, max_norm: float, norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
        """``optimizer.clip_grad_norm_``: the serving ranks clip the step's mean gradient (rules
        that run on the serving ranks), or this worker clips its own (local Adam rules)."""
        step = self.steps_done + 1
        if norm_type != 2.0:
            raise UsageError(
                f"step {step}: clip_grad_norm_(norm_type={norm_type:g}): qtrain clips by the 2-norm only"
            )
        if not max_norm > 0 or max_norm == float("inf"):
            raise UsageError(f"step {step}: clip_grad_norm_(max_norm={max_norm!r}) needs a finite norm > 0")
        algorithm = self.engine.algorithm
        if algorithm.fused_worker_rule != "identity":  # the gradient is consumed here, before any mean
            if not self.clip_warned:
                self.clip_warned = True
                line = (
                    f"{algorithm.name}: clip_grad_norm_ clips each worker's own gradient by its own norm "
                    "(its local Adam step runs on it before anything is averaged), not the mean's as DDP does"
                )
                self.svc.log.warning(line)
                warnings.warn(line, stacklevel=3)
            if self.begun and self.hook_sent:
                raise UsageError(
                    f"step {step}: clip_grad_norm_ after backward had sent the step (overlap is on): "
                    "create the optimizer with overlap=False"
                )
            return torch.nn.utils.clip_grad_norm_(
                self.optimizer_params(), max_norm, error_if_nonfinite=error_if_nonfinite
            )
        if not self.backward_seen:
            raise UsageError(
                f"step {step}: clip_grad_norm_ before backward(): clip between backward() and step()"
            )
        if self.hook_sent:
            raise UsageError(
                f"step {step}: clip_grad_norm_ with overlap on: backward's hooks sent the step's segments "
                "before the call, and the serving ranks clip the mean as its segments arrive; create the "
                "optimizer with overlap=False (or set runtime.overlap=off)"
            )
        self.driver.max_norm = max_norm
        self.clip_error = error_if_nonfinite
        self.clip_out = torch.tensor(float("nan"))
        return self.clip_out

    def optimizer_params(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            raise UsageError("optimizer.clip_grad_norm_ before session.optimizer(model)")
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(
        self,
        loss: float | torch.Tensor | None = None,
        found_inf: torch.Tensor | None = None,
        grad_scale: torch.Tensor | None = None,
    ) -> bool:
        """Exchange this step with the server; whether every rank agreed to stop."""
        step = self.steps_done + 1
        if self.closed:
            raise UsageError(f"optimizer.step() after session.close() (step {step})")
        why = self.flat.changed_parameter()
        if why:
            raise UsageError(
                f"step {step}: {why} after session.optimizer(model), which fixed the parameters qtrain "
                "trains and keeps them in its flat buffers: replace, reshape, freeze or unfreeze parameters "
                "(requires_grad_) and move the model to session.device before creating the optimizer"
            )
        if not self.backward_seen:
            raise UsageError(
                f"step {step}: optimizer.step() without a backward pass since the last step "
                "(call loss.backward() or optimizer.backward(loss) first)"
            )
        if self.hook_sent:
            self._check_after_hooks(step, found_inf, grad_scale, loss)
        self.flat.reattach_grads()  # a .grad that model.zero_grad() dropped and backward never made
        grads = self.flat.grads
        if grad_scale is not None:  # GradScaler.step without unscale_: unscale as it would
            grads.mul_(grad_scale.double().reciprocal().float().to(grads.device))
        if found_inf is not None and float(found_inf):
            # one worker cannot skip a step the others take: it contributes a zero gradient
            grads.zero_()
            self.svc.log.info("step %d: non-finite scaled gradient, this worker contributes zero", step)
        if loss is not None:
            self.set_loss(loss)
        elif self.loss_given and found_inf is not None and self.loss_scale:  # scaler.step(opt) drove it
            self.driver.record["loss"] = float(self.driver.record["loss"][0]) / self.loss_scale
        value = float(self.driver.record["loss"][0]) if self.loss_given else None
        self.driver.end_backward(value)
        stopping = self.driver.exchange(step)
        if self.clip_out is not None:
            norm = self.driver.grad_norm
            self.clip_out.fill_(float("nan") if norm is None else norm)
            if self.clip_error and norm is not None and not math.isfinite(norm):
                raise UsageError(
                    f"step {step}: the mean gradient's norm is {norm} "
                    "(clip_grad_norm_(error_if_nonfinite=True))"
                )
        if self.driver.buffers_asked:  # the server evaluates after this step
            self.svc.watchdog.enter(f"step {step}: buffers")
            self._sync_buffers()
        self.steps_done = step
        self.begun = self.backward_seen = False
        self.t_end = time.perf_counter()
        if stopping and not self.stopping:
            self.stopping = True
            self.svc.log.info("stop agreed after step %d (local: %s)", step, self.svc.stop.reason or "none")
        log_every = self.plan.cfg.train.log_every
        if step % log_every == 0:
            loss_part = f" loss {value:.5f}" if value is not None else ""  # no loss reported: none shown
            self.svc.log.info(
                "step %d%s compute %.4fs comm %.4fs",
                step,
                loss_part,
                self.driver.compute_s,
                self.driver.comm_s,
            )
        self._enter_loop()
        return self.stopping

    def _check_after_hooks(
        self,
        step: int,
        found_inf: torch.Tensor | None,
        grad_scale: torch.Tensor | None,
        loss: float | torch.Tensor | None,
    ) -> None:
        """With overlap, backward's hooks sent segments: nothing may have changed the gradient or
        the learning rate since, and a GradScaler cannot work (its scale went out with them)."""
        if self.flat.grads._version != self.hook_version:
            raise UsageError(
                f"step {step}: the gradient changed after backward had sent it (overlap is on: gradient "
                "clipping or another change between backward() and step()); create the optimizer with "
                "overlap=False (or set runtime.overlap=off) to change gradients before step()"
            )
        if found_inf is not None or grad_scale is not None:
            raise UsageError(
                f"step {step}: a GradScaler needs the optimizer created with overlap=False (overlap sent "
                "the scaled gradient during backward)"
            )
        if self.current_lrs() != self.hook_lr:
            sent = " ".join(f"{v:g}" for v in self.hook_lr)
            raise UsageError(
                f"step {step}: the learning rate changed after backward had sent the step with lr "
                f"{sent} (overlap is on): change it after optimizer.step() (as schedulers do), or "
                "create the optimizer with overlap=False"
            )
        if loss is not None and not self.warned_loss:
            self.warned_loss = True
            warnings.warn(
                "optimizer.step(loss=...) with overlap on: the segments backward sent carry no loss, so the "
                "trace's loss column stays empty; use optimizer.backward(loss) instead",
                stacklevel=4,
            )

    # ------------------------------------------------------------------ between steps
    def _between_steps(self, what: str) -> int:
        if self.begun or self.backward_seen:
            raise UsageError(
                f"{what} between backward() and optimizer.step() (step {self.steps_done + 1}): "
                "call it after step()"
            )
        return self.steps_done

    def checkpoint(self, extra: Any) -> None:
        step = self._between_steps("session.checkpoint()")
        if step == 0:
            raise UsageError(
                "session.checkpoint() before the first optimizer.step(): there is nothing to save yet"
            )
        packed = extra_state.pack(extra) if extra is not None else None  # refused before anything is sent
        snapshot = to_numpy(self._snapshot(packed))
        self.svc.watchdog.enter(f"step {step}: checkpoint")
        d = self.driver
        report = CheckpointReport(snapshot, d.comm_s, d.decode_s, self._take_metrics())
        d.send_control(step + 1, FLAG_CHECKPOINT, report=lambda: self.transport.report(report))
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
        self._between_steps("the end of the loop (session.close())")
        self.closed = True
        step = self.steps_done
        self.svc.watchdog.enter(f"end after step {step}")
        self.flat._on_param_ready = None
        self.driver.send_control(step + 1, FLAG_END)
        self._ended()
        self._sync_buffers()
        self.svc.watchdog.enter("final timing report")
        d = self.driver
        self.transport.report(
            FinalReport(d.comm_s, d.decode_s, d.backward_end, d.arrived, d.applied, self._take_metrics())
        )
        self.live.close()
        self._reported()

    def _ended(self) -> None:
        """Every worker ended its loop (the server took the end): before the buffers are combined."""

    def _reported(self) -> None:
        """This worker sent its final report: the last thing it does."""

    def _sync_buffers(self) -> None:
        if has_buffers(self.flat.module):
            worker_sync(self.transport, self.flat.module)

    def log(self, metrics: dict[str, Any]) -> None:
        step = self.steps_done
        if (
            "loss" in metrics and self.begun and not self.loss_given
        ):  # between backward and step: the step's loss
            value = metrics["loss"]
            self.set_loss(value.item() if isinstance(value, torch.Tensor) else value)
        for name, value in metrics.items():
            if len(name.encode()) > METRIC_NAME_BYTES:
                raise UsageError(f"session.log(): the name {name!r} is longer than {METRIC_NAME_BYTES} bytes")
            try:
                number = float(value.item() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError, RuntimeError):
                raise UsageError(f"session.log({name}=...): {type(value).__name__} is not a number") from None
            self.metrics.append((step, name, number))
            self.live.scalars(step, {name: number})

    def _take_metrics(self) -> list[Metric]:
        rows, self.metrics = self.metrics, []
        return rows

    # ------------------------------------------------------------------ checkpoints
    def _snapshot(self, packed_extra: Any) -> dict[str, Any]:
        own = buffer_state(self.flat.module) if has_buffers(self.flat.module) else None  # kept, not combined
        positions = self.session._shard_positions()
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        initial = [g.get("initial_lr") for g in groups]
        initial_lrs = initial if initial and None not in initial else None
        return worker_snapshot(self.engine, positions, self.current_lrs(), own, packed_extra, initial_lrs)

    def _restore(self, resume: ResumePoint) -> None:
        replica = resume.replica_params  # runtime/resume.py gives every worker the replica's tensor
        if not isinstance(replica, torch.Tensor):
            raise RuntimeError(f"rank {self.topology.rank}: the resume point holds no replica parameters")
        self.flat.params.copy_(replica)
        if resume.buffers is not None:
            load_buffers(self.flat.module, resume.buffers)
        self.steps_done = resume.step
        w = resume.worker
        if w is None:
            self.svc.log.info("--reset-worker-state: moments and error buffers start from zero")
            return
        self.engine.load_state_dict(w["engine"])
        if "buffers" in w:
            load_buffers(self.flat.module, w["buffers"])
        rng_restore(w["rng"])
        lrs = snapshot_lrs(w, "lr")  # None: a checkpoint from before the library ran at algorithm.lr
        if lrs is not None:
            if len(lrs) != len(self.lrs):
                raise UsageError(
                    f"the checkpoint holds the learning rates of {len(lrs)} param group(s), and this run has "
                    f"{len(self.lrs)} (a resumed loop passes session.optimizer the same groups)"
                )
            then, now = resume.saved_lr, self.engine.algorithm.hp.lr
            if then and then != now:  # a resume that changes algorithm.lr scales the run's rates
                lrs = [lr * now / then for lr in lrs]
            self.lrs, self.pending_lrs = list(lrs), list(lrs)
        self.initial_lrs = snapshot_lrs(w, "initial_lr")
        self.session._resume_shards(worker_positions(w), resume.path)
        self.session._resumed_extra = extra_state.unpack(w["extra"]) if "extra" in w else None
        self.svc.log.info("resumed at step %d", resume.step)
