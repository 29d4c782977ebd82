"""The step driver: the order of one training step on each side, written once.

The MPI roles (``library/worker.py``, ``library/serve.py``) and the simulator
(``engine/simulator.py``) are loops over these two classes; they differ only in the channel the
driver talks to (``engine/channel.py``: MPI's transport, or the in-process channel of the
simulator's virtual workers), which is why an MPI run and a simulated one end with the same
parameters bit for bit.

A worker step (:class:`WorkerStep`):

1. ``compute``: forward and backward on the batch. Each segment of the flat gradient is encoded
   (worker rule, error feedback, quantize and pack: ``WorkerEngine.make_uplink``) and posted with
   its record the moment backward completes it (overlap), or after backward;
2. ``exchange``: the step's downlink segments are applied to the replica as they arrive
   (``WorkerEngine.apply_downlink``), and the uplink sends are completed. Whether the server asked
   every rank to stop comes back with the downlink.

A server step (:class:`ServerStep`): take each segment as soon as every worker's uplink of it is
in, average it in worker order (``ServerEngine.aggregate``), run the server rule and encode its
downlink (``ServerEngine.make_downlink``), post its broadcast, and decide an agreed stop once every
record of the step is in. Evaluation, checkpoints and buffer synchronisation happen between steps,
in the loops, because they are the run's cadence, not the step's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

from qtrain.engine.channel import ServerChannel, WorkerChannel
from qtrain.engine.divergence import check_loss
from qtrain.engine.flat import FlatModel
from qtrain.engine.partition import Partition, Segment
from qtrain.engine.readiness import SegmentReadiness
from qtrain.engine.recorder import WorkerReport
from qtrain.engine.records import (
    CONTROL_FLAGS,
    FLAG_BUFFERS,
    FLAG_CHECKPOINT,
    FLAG_CLIP,
    FLAG_END,
    FLAG_STOP,
    UPLINK_RECORD,
)

if TYPE_CHECKING:
    from qtrain.engine.server import ServerEngine
    from qtrain.engine.shards import InProcessShards
    from qtrain.engine.worker import WorkerEngine


def _nothing(_what: str) -> None:
    return None


def _nothing_at(_step: int) -> None:
    return None


class StepRecorder(Protocol):
    """What the server step tells its recorder: ``engine/recorder.Recorder`` on the lead and in the
    simulator, ``runtime/shard_serving.ShardRecorder`` on the other serving ranks."""

    def enter(self, what: str) -> None: ...

    def begin_step(self, step: int) -> None: ...

    def add_time(self, name: str, seconds: float) -> None: ...

    def phase(self, name: str, seg: Segment | None = None) -> AbstractContextManager[Any]: ...

    def uplinks(self, sizes: list[int], seg: Segment) -> None: ...

    def downlink(self, size: int, seg: Segment) -> None: ...


class StepTimeline(Protocol):
    """The per-segment instants the server step marks: ``runtime/timeline.TimelineRecorder`` (the
    lead), ``ShardTimeline`` (another serving rank), or none (:class:`_NoTimeline`)."""

    def begin_step(self, step: int, t0: float) -> None: ...

    def mark(self, seg: Segment, column: str) -> None: ...

    def end_step(self, records: list[np.ndarray], posted_at: np.ndarray, done_at: np.ndarray) -> None: ...


class WorkerStep:
    """One worker's side of every step, against its channel. ``enter(what)`` tells the watchdog
    (MPI) what is running. The previous step's communication and decode times and instants travel
    in this step's records, as the trace and the timeline expect them."""

    def __init__(
        self,
        engine: WorkerEngine,
        model: FlatModel,
        channel: WorkerChannel,
        partition: Partition,
        overlap: bool = False,
        enter: Callable[[str], None] = _nothing,
    ):
        self.engine, self.model = engine, model
        self.channel: WorkerChannel = channel
        self.partition, self.overlap, self.enter = partition, overlap, enter
        self.readiness = SegmentReadiness(model.layout, partition)
        self.record = np.zeros(1, dtype=UPLINK_RECORD)
        self.comm_s = self.decode_s = self.compute_s = 0.0  # of the last step
        self.arrived: np.ndarray = np.zeros(len(partition))  # when each segment's last downlink arrived
        self.applied: np.ndarray = np.zeros(len(partition))  # ... and was applied (perf_counter instants)
        self.backward_end = 0.0
        self._busy = self._t0 = 0.0
        self._step, self._first_send = 0, True
        self.groups = engine.groups
        self.base_lrs = list(self.groups.base_lrs)
        # this step's learning rate of every param group (None: the base ones)
        self.lr_source: Callable[[], Sequence[float]] | None = None
        self.max_norm = 0.0  # clip this step's mean gradient to this norm (0: no clipping)
        self.grad_norm: float | None = None  # the last step's mean-gradient norm, when it clipped
        self.buffers_asked = False  # the last downlink asked for the model buffers
        # a co-located rank's own server turn (``runtime/colocated.py``): taken once this rank's
        # uplinks (or control frame) are posted and its downlink receives are, before it waits
        # for either to complete
        self.serve: Callable[[], object] | None = None

    def receive_initial(self) -> None:
        """Weights mode: adopt the server's starting weights (the step-0 downlink)."""
        if self.engine.mode != "weights":
            return
        self.channel.use_codecs(*self.engine.links.codecs(0))
        self.channel.post_downlinks(0)
        for seg, _, msg in self.channel.downlinks(0):
            self.engine.apply_downlink(seg, msg, self.model.params)

    def begin(self, step: int, stop_requested: bool = False, t0: float | None = None) -> None:
        """Start step ``step`` (its compute time counts from ``t0``, default now): the engines'
        step count, the record's per-step fields and the overlap bookkeeping. Backward may run
        from here on (its hooks send segments)."""
        self.engine.begin_step()
        self.channel.use_codecs(*self.engine.links.codecs(step))  # the step's frames (warm-up: none)
        t0 = self._t0 = time.perf_counter() if t0 is None else t0
        self._busy, self._step, self._first_send = 0.0, step, True
        rec = self.record
        rec["step"], rec["loss"], rec["compute_s"], rec["max_norm"] = step, np.nan, 0.0, 0.0
        rec["prev_comm_s"], rec["prev_decode_s"] = self.comm_s, self.decode_s
        rec["t_start"], rec["prev_t_backward"] = t0, self.backward_end
        rec["flags"] = FLAG_STOP if stop_requested else 0
        if self.overlap:
            self.readiness.begin()

    def end_backward(self, loss: float | None) -> None:
        """Backward is over: send every segment its hooks have not sent. Raises ``Diverged`` for a
        non-finite loss (after the segments backward already sent)."""
        self.backward_end = time.perf_counter()
        if loss is not None:
            check_loss(self._step, self.engine.worker, loss)
        self.compute_s = self.backward_end - self._busy - self._t0  # forward + backward, without encodes
        self._send(self.readiness.rest() if self.overlap else list(self.partition))

    def compute(
        self, step: int, x: torch.Tensor, y: torch.Tensor, task: str, stop_requested: bool = False
    ) -> float:
        """Forward, backward and every segment's uplink posted; the batch loss. Raises
        ``Diverged`` for a non-finite loss (after the segments backward already sent)."""
        self.begin(step, stop_requested)
        rec = self.record
        ready = self._param_ready if self.overlap else None
        device = self.model.device
        loss = self.model.loss_and_grad(
            x.to(device), y.to(device), task, ready, on_loss=lambda value: rec.__setitem__("loss", value)
        )
        self.end_backward(loss)
        return loss

    def send_control(self, step: int, flags: int, report: Callable[[], None] | None = None) -> None:
        """A control frame for every segment in place of step ``step``'s uplinks (length 0): the
        server learns what this worker does between steps ``step - 1`` and ``step``. ``report()``:
        what the worker sends the lead with it (a checkpoint's snapshot), once the frames are
        posted: before this rank's own server turn when it has one (co-located: its lead side
        gathers the reports in that turn), else once they are sent."""
        rec = np.zeros(1, dtype=UPLINK_RECORD)
        rec["step"], rec["flags"] = step, flags
        self.channel.use_codecs(*self.engine.links.codecs(step))  # the frames of the step it stands for
        empty = torch.empty(0, dtype=torch.uint8)
        for seg in self.partition:
            self.channel.send_uplink(seg, rec, empty)
        if self.serve is not None:
            if report is not None:
                report()
            self.serve()
            self.channel.finish_sends(step)
            return
        self.channel.finish_sends(step)
        if report is not None:
            report()

    def exchange(self, step: int) -> bool:
        """Apply this step's downlink segments as they arrive, complete the sends; whether the
        server asked every rank to stop after this step (``buffers_asked``: whether it asked
        for the model buffers, which the caller then combines)."""
        t_start, decode_s, stopping, buffers = time.perf_counter(), 0.0, False, False
        self.grad_norm = None
        self.enter(f"step {step}: downlink")
        self.channel.post_downlinks(step)
        if self.serve is not None:
            self.serve()
        for seg, head, msg in self.channel.downlinks(step):  # as they complete
            td = self.arrived[seg.index] = time.perf_counter()
            self.engine.apply_downlink(seg, msg, self.model.params)
            self.applied[seg.index] = time.perf_counter()
            decode_s += self.applied[seg.index] - td
            flags = int(head["flags"])  # set on the server's last segment
            stopping |= bool(flags & FLAG_STOP)
            buffers |= bool(flags & FLAG_BUFFERS)
            if flags & FLAG_CLIP:
                self.grad_norm = float(head["grad_norm"])
            self.enter(f"step {step}: downlink")
        self.channel.finish_sends(step)
        self.buffers_asked = buffers
        self.comm_s = time.perf_counter() - t_start - decode_s  # waiting and transfer (in-process: ~0)
        self.decode_s = decode_s
        return stopping

    def _apply_lr(self) -> None:
        """This step's learning rate of every param group (``lr_source()``, a library user's
        schedule, else the groups' starting rates) and the norm to clip to: both travel in the
        records, and both sides use exactly these values."""
        lrs = self.lr_source() if self.lr_source is not None else self.base_lrs
        self.record["lr"][0, : len(lrs)] = lrs
        self.record["max_norm"] = self.max_norm
        self.groups.set_lrs(lrs)

    def _param_ready(self, param: int) -> bool:
        """The per-parameter callback of the backward pass: send what each parameter completes;
        whether it completed a segment."""
        done = self.readiness.param_ready(param)
        if done:
            self._send(done)
            self.enter(f"step {self._step}: compute (backward)")
        return bool(done)

    def _send(self, segments: Sequence[Segment]) -> None:
        """Encode each segment into its send frame and post it, keeping the record current (the
        compute time up to this segment, its encode time and statistics)."""
        engine, model, channel, rec = self.engine, self.model, self.channel, self.record
        if segments and self._first_send:  # the step's learning rate is fixed from its first segment
            self._first_send = False
            self._apply_lr()
        for seg in segments:
            te = time.perf_counter()
            self.enter(f"step {self._step}: encode + send (segment {seg.index})")
            rec["compute_s"] = te - self._t0 - self._busy
            rec["t_ready"] = te
            rec["prev_t_arrived"], rec["prev_t_applied"] = self.arrived[seg.index], self.applied[seg.index]
            packed = engine.make_uplink(seg, model.grads, model.params, out=channel.message_buffer(seg))
            rec["encode_s"] = time.perf_counter() - te
            rec["err_sq"], rec["ref_sq"], rec["ef_sq"] = engine.stats.part(seg)
            rec["t_sent"] = time.perf_counter()
            channel.send_uplink(seg, rec, packed)
            channel.progress()
            self._busy += time.perf_counter() - te


class ServerStep:
    """The serving rank's side of every step, against its channel, timed by the recorder (and the
    MPI timeline: ``timeline``, which the MPI server sets once the clocks are synchronised, after
    the initial weights went out). ``decide_stop(records)`` returns the agreed stop reason once
    every record of the step is in (None: go on). ``segments``: the ones this rank serves (with
    several serving ranks its own, ``Partition.owned_by``; by default every segment)."""

    def __init__(
        self,
        engine: ServerEngine | InProcessShards,
        channel: ServerChannel,
        partition: Partition,
        recorder: StepRecorder,
        timeline: StepTimeline | None = None,
        decide_stop: Callable[[list[np.ndarray]], str | None] | None = None,
        names: list[str] | None = None,
        wants_buffers: Callable[[int, bool], bool] | None = None,
        segments: Iterable[Segment] | None = None,
    ):
        self.engine, self.partition = engine, partition
        self.channel: ServerChannel = channel
        self.rec: StepRecorder = recorder
        self.segments = tuple(partition) if segments is None else tuple(segments)
        self.timeline: StepTimeline = timeline if timeline is not None else _NoTimeline()
        self.decide_stop: Callable[[list[np.ndarray]], str | None] = decide_stop or (lambda records: None)
        # (step, stopping) -> whether the workers combine their buffers after the step (the
        # server evaluates then): the step's downlink says so
        self.wants_buffers: Callable[[int, bool], bool] = wants_buffers or (lambda step, stopping: False)
        # called with the step once its first uplinks are in
        self.before_step: Callable[[int], None] = _nothing_at
        self.names = names  # how messages name each worker ("rank 1", "worker 0"), in worker order
        # {segment index: sum of squares of its mean} of this rank's segments -> the sum over every
        # segment of the step, in segment order (several serving ranks exchange their parts)
        self.total_square: Callable[[dict[int, float]], float] = _sum_in_order

    def send_initial(self) -> None:
        """Weights mode: broadcast the starting weights every worker adopts before step 1."""
        if self.engine.mode != "weights":
            return
        self.channel.use_codecs(*self.engine.links.codecs(0))
        for seg in self.segments:
            initial = self.engine.initial_message(seg)
            if initial is None:  # the engine serves weights (checked above), so it has a message
                raise RuntimeError(f"segment {seg.index}: no initial weights to send")
            self.channel.post_downlink(seg, 0, 0, initial)
            self.rec.downlink(initial.numel(), seg)
        self.channel.finish_downlinks(0)

    def run(self, step: int) -> StepResult:
        """One step: the uplink records per segment and the agreed stop reason (None: go on); or,
        when the workers sent control frames in place of this step's uplinks, what they asked
        for (``control``; the step has not begun, the caller acts on it and runs the step again)."""
        rec, timeline, channel, engine = self.rec, self.timeline, self.channel, self.engine
        t0 = time.perf_counter()
        channel.use_codecs(*engine.links.codecs(step))  # the step's frames (warm-up: codec none)
        channel.post_uplinks()
        records: list[np.ndarray | None] = [None] * len(self.partition)
        arrivals = channel.uplinks(step)
        rec.enter(f"step {step}: gather")
        first = next(arrivals)
        control = control_of(first[1], step, self.names)
        if control:
            for _seg, recs, _ in arrivals:  # every segment carries the same control frame
                if control_of(recs, step, self.names) != control:
                    raise WorkersDisagree(f"step {step}: control frames differ between segments")
            return StepResult(None, None, control, False)
        self.before_step(step)
        rec.begin_step(step)
        rec.add_time("gather", time.perf_counter() - t0)
        timeline.begin_step(step, t0)
        engine.begin_step()
        engine.groups.set_lrs(lrs_of(first[1], step, len(engine.groups), self.names))
        max_norm = clip_of(first[1], step, self.names)
        stop_reason: str | None = None
        held: list[tuple[Segment, torch.Tensor]] = []
        grad_norm: float | None = None
        for n in range(1, len(self.segments) + 1):  # segments in the order their uplinks complete
            if n == 1:
                seg, recs, messages = first
            else:
                with rec.phase("gather"):
                    seg, recs, messages = next(arrivals)
                if control_of(recs, step, self.names):  # a control frame in the middle of a step
                    raise WorkersDisagree(
                        f"step {step}, segment {seg.index}: a control frame arrived after the step's first "
                        "segments (a worker ended or checkpointed between backward() and step()?)"
                    )
            timeline.mark(seg, "uplinks_in_s")
            records[seg.index] = recs
            rec.uplinks([m.numel() for m in messages], seg)
            with rec.phase("aggregate", seg):
                mean = engine.aggregate(seg, messages)
            timeline.mark(seg, "aggregated_s")
            if max_norm:  # clipping needs the whole mean's norm: every segment's rule waits for it
                held.append((seg, mean))
                if n < len(self.segments):
                    continue
                with rec.phase("aggregate"):
                    grad_norm, coef = clip_coefficient(self.total_square, held, max_norm)
                    for _, m in held:
                        m.mul_(coef)
            else:
                held = [(seg, mean)]
            for k, (seg, mean) in enumerate(sorted(held, key=lambda h: h[0].index)):
                with rec.phase("server_step", seg):
                    down = engine.make_downlink(seg, mean)
                timeline.mark(seg, "encoded_s")
                flags = 0
                if n == len(self.segments) and k == len(held) - 1:  # every record is in: decide the stop
                    stop_reason = self.decide_stop([r for r in records if r is not None])
                    buffers = self.wants_buffers(step, stop_reason is not None)
                    flags = (FLAG_STOP if stop_reason else 0) | (FLAG_BUFFERS if buffers else 0)
                    flags |= FLAG_CLIP if grad_norm is not None else 0
                with rec.phase("broadcast", seg):
                    channel.post_downlink(seg, step, flags, down, grad_norm)
                rec.downlink(down.numel(), seg)
        with rec.phase("broadcast"):
            channel.finish_downlinks(step)
        mine = [r for r in records if r is not None]  # this rank's segments, in index order
        timeline.end_step(mine, channel.down_posted_at, channel.down_done_at)
        return StepResult(mine, stop_reason, 0, buffers)


class WorkersDisagree(RuntimeError):
    """The workers sent different things for one step (control frames, learning rates)."""


class StepResult(NamedTuple):
    records: (
        list[np.ndarray] | None
    )  # the uplink records of each segment served here (arrays in worker order)
    stop_reason: str | None  # the agreed stop, or None
    control: int  # the control flag the workers sent instead of uplinks (0: a step ran)
    buffers: bool = False  # the downlink asked every worker to combine its buffers after the step


def _sum_in_order(parts: dict[int, float]) -> float:
    return sum(parts[k] for k in sorted(parts))


def clip_coefficient(
    total_square: Callable[[dict[int, float]], float],
    held: list[tuple[Segment, torch.Tensor]],
    max_norm: float,
) -> tuple[float, float]:
    """``torch.nn.utils.clip_grad_norm_`` of the step's mean gradient (what DDP's workers clip):
    its norm over every segment (sums of squares in float64, added in segment order by
    ``total_square``, so the result does not depend on which rank serves which segment) and the
    factor min(1, max_norm / (norm + 1e-6)) the mean is multiplied by (torch multiplies by the
    clamped factor, 1.0 included)."""
    parts = {seg.index: float(torch.sum(torch.square(m.double()))) for seg, m in held}
    norm = math.sqrt(total_square(parts))
    return norm, min(max_norm / (norm + 1e-6), 1.0)


_INTENT = {
    FLAG_CHECKPOINT: "called session.checkpoint()",
    FLAG_BUFFERS: "called session.sync_buffers()",
    FLAG_END: "ended its loop",
}


def control_of(records: np.ndarray, step: int, names: list[str] | None) -> int:
    """The control flag every worker sent in place of step ``step``'s uplinks (0: none did).
    Workers that disagree (one checkpoints or ends while another goes on) stop the run with one
    line that says what each did."""
    flags = [int(f) & CONTROL_FLAGS for f in records["flags"]]
    names = names or [f"worker {i}" for i in range(len(flags))]
    if len(set(flags)) == 1:
        return flags[0]
    what = [
        f"{name} {_INTENT[f] if f else f'went on to step {step}'}"
        for name, f in zip(names, flags, strict=True)
    ]
    raise WorkersDisagree(
        f"the workers disagree after step {step - 1}: {', '.join(what)}; every worker must make the "
        "same number of steps and call session.checkpoint() and session.sync_buffers() at the same steps"
    )


def lrs_of(records: np.ndarray, step: int, groups: int, names: list[str] | None) -> list[float]:
    """Step ``step``'s learning rate of every param group from its first segment's records;
    workers that disagree stop the run."""
    lrs = records["lr"][:, :groups]
    if (lrs != lrs[0]).any():
        names = names or [f"worker {i}" for i in range(len(lrs))]
        said = ", ".join(
            f"{n} {' '.join(f'{v:.6g}' for v in row)}" for n, row in zip(names, lrs, strict=True)
        )
        raise WorkersDisagree(f"the workers use different learning rates in step {step}: {said}")
    return [float(v) for v in lrs[0]]


def clip_of(records: np.ndarray, step: int, names: list[str] | None) -> float:
    """The norm step ``step`` clips its mean gradient to (0: none); workers that disagree stop the run."""
    norms = records["max_norm"]
    if (norms != norms[0]).any():
        names = names or [f"worker {i}" for i in range(len(norms))]
        said = ", ".join(f"{n} {float(v):g}" for n, v in zip(names, norms, strict=True))
        raise WorkersDisagree(f"the workers clip step {step} to different norms: {said}")
    return float(norms[0])


class _NoTimeline:
    """What a run without a per-segment timeline (the simulator) gives the server step."""

    def begin_step(self, step: int, t0: float) -> None:
        pass

    def mark(self, seg: Segment, column: str) -> None:
        pass

    def end_step(self, records: list[np.ndarray], posted_at: np.ndarray, done_at: np.ndarray) -> None:
        pass


def worker_report(records: list[np.ndarray]) -> WorkerReport:
    """One step's worker measurements from its records (one array of workers per segment): the
    per-step fields from the last segment, the per-segment ones summed."""
    last = records[-1]
    total = {k: np.sum([r[k] for r in records], axis=0) for k in ("encode_s", "err_sq", "ref_sq", "ef_sq")}
    return WorkerReport(
        last["loss"],
        last["compute_s"],
        total["encode_s"],
        total["err_sq"],
        total["ref_sq"],
        total["ef_sq"],
        prev_comm_s=last["prev_comm_s"],
        prev_decode_s=last["prev_decode_s"],
    )
