"""Several serving ranks under MPI (DESIGN.md section 8): what the serving ranks other than the
lead run, and what they tell the lead.

Every serving rank runs the step driver's server step (``engine/step.py``) over the segments it
owns, with an engine holding its shard only. The lead (``Topology.servers[0]``) owns the head of
the flat vector, whose segments backward sends last: their records carry every per-step field a
worker sends (loss, compute time, flags, the stop a signal asked for), so the lead decides agreed
stops alone, as one server does. After each step every other owner sends the lead its
:class:`StepPart` (its bytes, phase times, the workers' encode times and compression statistics
over its segments, and its downlink statistics), on the servers' communicator; the lead answers
whether it evaluates after the step, and then gathers every shard of the master copy. A signal
on another owner travels in its part: the lead takes it as its own stop request, agreed with the
next step's downlinks. Statistics
combine as sums (bytes) and sums of squares (norms), segment by segment, so the trace's numbers
are those of one server. At checkpoints the lead gathers the shards' state
(``engine/shards.join_states``: the file does not depend on K); at the end, the master shards.

These exchanges are pickled collectives on the servers' communicator, after the step's
downlinks are posted: separate workers never wait for them (co-located ranks, whose serving turn
runs inside their own step, do: ``runtime/colocated.py``). What travels is a dataclass of
``engine/reports.py``: a :class:`~qtrain.engine.reports.StepPart` after each step, a
:class:`~qtrain.engine.reports.ShardState` at a checkpoint, the master shard (an array) at
evaluations and at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qtrain.engine.engine_state import SegmentStats
from qtrain.engine.partition import Partition, Segment
from qtrain.engine.recorder import WorkerReport, timed
from qtrain.engine.reports import ShardState, StepPart
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.server import ServerEngine
from qtrain.engine.shards import join_states, join_stats
from qtrain.engine.snapshots import to_numpy, to_torch
from qtrain.engine.step import StepResult
from qtrain.engine.topology import Topology
from qtrain.io.net_counters import NetCounters
from qtrain.runtime.communicators import Group

if TYPE_CHECKING:
    from qtrain.engine.flat import FlatModel
    from qtrain.engine.step import ServerStep
    from qtrain.runtime.resume import ResumePoint
    from qtrain.runtime.timeline import ShardTimeline
    from qtrain.runtime.transport import ServerTransport

WORKER_SUMS = ("encode_s", "err_sq", "ref_sq", "ef_sq")  # per worker, summed over segments


class ShardRecorder:
    """What the server step needs of a recorder on a serving rank that is not the lead: phase
    times (the watchdog is told each phase) and bytes, gathered into the step's :class:`StepPart`."""

    def __init__(self, watchdog: Any = None, counters: NetCounters | None = None):
        self.watchdog, self.step, self.part = watchdog, 0, StepPart()
        self.counters = counters  # io.net_counters.NetCounters of this rank's link, or None

    def enter(self, what: str) -> None:
        if self.watchdog is not None:
            self.watchdog.enter(what)

    def begin_step(self, step: int) -> None:
        self.step, self.part = step, StepPart()

    def add_time(self, name: str, seconds: float) -> None:
        self.part.times[name] = self.part.times.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str, seg: Segment | None = None) -> Iterator[None]:
        where = f" (segment {seg.index})" if seg is not None else ""
        self.enter(f"step {self.step}: {name}{where}")
        with timed(self.add_time, name):
            yield

    def uplinks(self, sizes: list[int], seg: Segment) -> None:
        self.part.up.append((list(sizes), seg.numel))

    def downlink(self, size: int, seg: Segment) -> None:
        self.part.down.append((int(size), seg.numel))

    def finish(self, records: list[np.ndarray], stats: SegmentStats) -> StepPart:
        """The step's part, with the workers' sums over this rank's segments."""
        part = self.part
        part.workers = {k: np.sum([r[k] for r in records], axis=0) for k in WORKER_SUMS}
        part.stats, part.has_ef = dict(stats.parts), stats.has_ef
        if self.counters is not None:
            part.wire = self.counters.delta()
        return part


def with_parts(report: WorkerReport, parts: list[StepPart]) -> WorkerReport:
    """The lead's worker report with the other owners' sums added (its own per-step fields kept)."""
    sums = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in WORKER_SUMS}
    for p in parts:
        for k in WORKER_SUMS:
            sums[k] = sums[k] + p.workers[k]
    return WorkerReport(
        report.loss,
        report.compute_s,
        sums["encode_s"],
        sums["err_sq"],
        sums["ref_sq"],
        sums["ef_sq"],
        prev_comm_s=report.prev_comm_s,
        prev_decode_s=report.prev_decode_s,
    )


def down_stats(lead: SegmentStats, parts: list[StepPart]) -> dict[str, float]:
    """The downlink statistics of every owner's segments, as one server's."""
    others = []
    for p in parts:
        s = SegmentStats()
        s.parts, s.has_ef = dict(p.stats), p.has_ef
        others.append(s)
    return join_stats([lead, *others]).summary("down")


class ServersLink:
    """The servers' group from either side (``group``: ``Communicators.servers``; the lead is its
    rank 0)."""

    def __init__(self, group: Group, topology: Topology, partition: Partition):
        self.group, self.topology, self.partition = group, topology, partition
        self.backend = group.member
        self.root = group.local(topology.server)

    # ------------------------------------------------------------------ the lead
    def _others(self, kind: type[Any]) -> list[Any]:
        """What every other owner sent with its ``gather``, in owner order: each a ``kind``."""
        parts = self.backend.gather(None, root=self.root)
        if parts is None:
            raise RuntimeError(
                f"rank {self.topology.rank} gathered the serving ranks' parts but is not the lead"
            )
        others = parts[1:]
        for rank, part in zip(self.topology.servers[1:], others, strict=True):
            if not isinstance(part, kind):
                raise RuntimeError(
                    f"serving rank {rank} sent a {type(part).__name__} where a {kind.__name__} was expected"
                )
        return others

    def collect(self) -> list[StepPart]:
        """Every other owner's part of the step that just ended, in owner order."""
        return self._others(StepPart)

    def tell(self, evaluating: bool) -> None:
        self.backend.bcast(bool(evaluating), root=self.root)

    def gather_master(self, params: torch.Tensor) -> None:
        """Every other owner's master shard into ``params`` (the lead's model, whose own shard is
        the lead engine's master already)."""
        for owner, shard in enumerate(self._others(np.ndarray), start=1):
            params[self.partition.shard(owner)].copy_(torch.from_numpy(shard))

    def gather_state(self, lead_engine: ServerEngine, params: torch.Tensor) -> JoinedServer:
        """Every owner's state, master and replica joined: what one server would checkpoint."""
        parts: list[ShardState] = self._others(ShardState)
        for owner, part in enumerate(parts, start=1):
            params[self.partition.shard(owner)].copy_(torch.from_numpy(part.master))
        state = join_states([lead_engine.state_dict(), *(to_torch(p.state) for p in parts)])
        if lead_engine.mode == "weights":
            replica = torch.cat([lead_engine.replica, *(torch.from_numpy(p.replica) for p in parts)])
        else:
            replica = params
        return JoinedServer(params, replica, state)

    # ------------------------------------------------------------------ another owner
    def report(self, part: StepPart) -> None:
        self.backend.gather(part, root=self.root)

    def evaluating(self) -> bool:
        return bool(self.backend.bcast(None, root=self.root))

    def send_master(self, engine: ServerEngine) -> None:
        self.backend.gather(engine.master.detach().cpu().numpy(), root=self.root)

    def send_state(self, engine: ServerEngine) -> None:
        state = ShardState(
            master=engine.master.detach().cpu().numpy(),
            replica=engine.replica.detach().cpu().numpy(),
            state=to_numpy(engine.state_dict()),
        )
        self.backend.gather(state, root=self.root)


def total_square_over(group: Group) -> Callable[[dict[int, float]], float]:
    """The step driver's ``total_square`` with several serving ranks: every owner's per-segment
    sums of squares of its means, exchanged on the servers' communicator, added in segment order
    (what one server adds: clipping's norm does not depend on K)."""

    backend = group.member

    def total(parts: dict[int, float]) -> float:
        merged: dict[int, float] = {}
        for p in backend.allgather(parts):
            merged.update(p)
        return sum(merged[k] for k in sorted(merged))

    return total


@dataclass
class JoinedServer:
    """Every owner's shards joined, with the interface the checkpointer reads."""

    master: torch.Tensor
    replica: torch.Tensor
    state: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return self.state


def serve_shard(
    plan: RunPlan,
    model: FlatModel,
    transport: ServerTransport,
    svc: Any,  # runtime/services.RankServices
    resume: ResumePoint | None,
) -> None:
    """A serving rank other than the lead: serve its shard until the workers end, answering the
    lead after every step, at evaluations, checkpoints and the end. ``model``: its copy of the
    model, whose shard the engine serves (restored from ``resume``, a cut the lead scattered)."""
    from qtrain.engine.serving_loop import serve_steps

    shard = plan.partition.shard(transport.mine[0].owner)  # this rank's: a view of its model's
    owner = start_shard(plan, model.params[shard], transport, svc, resume)
    serve_steps(owner.driver, owner, owner.start)
    owner.end()


def start_shard(
    plan: RunPlan,
    master: torch.Tensor,
    transport: ServerTransport,
    svc: Any,  # runtime/services.RankServices
    resume: ResumePoint | None,
) -> _Owner:
    """Another owner started: its engine over ``master``, its shard of the flat vector (restored
    from ``resume``, or its initial weights sent), its step driver and what it does between steps. A separate
    serving rank loops over it (:func:`serve_shard`); a co-located rank takes its turns inside its
    worker's steps (``library/colocated.py``)."""
    from qtrain.engine.step import ServerStep
    from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
    from qtrain.runtime.faults import maybe_fail
    from qtrain.runtime.timeline import ShardTimeline

    topo, part = plan.topology, plan.partition
    owner, servers = topo.owner, transport.comms.servers
    if owner is None or servers is None:
        raise ValueError(f"rank {topo.rank} is not one of several serving ranks: {topo.describe()}")
    engine: ServerEngine = plan.server_engine(master, owner=owner)
    rec = ShardRecorder(svc.watchdog, NetCounters.from_env())
    step_driver = ServerStep(
        engine, transport, part, rec, names=[f"rank {r}" for r in topo.workers], segments=transport.mine
    )
    step_driver.before_step = lambda step: maybe_fail(svc.fault, topo.rank, step)
    step_driver.total_square = total_square_over(servers)
    start = 0
    if resume is not None:
        t = resume.tree
        if t is None:
            raise ValueError(f"rank {topo.rank}: a serving rank resumes from its cut of the checkpoint")
        engine.master.copy_(t["params"])
        engine.replica.copy_(t["replica_params"])
        engine.load_state_dict(t["server"])
        start = resume.step
    elif plan.setup.algorithm.downlink_mode == "weights":
        svc.watchdog.enter("initial weights broadcast")
        step_driver.send_initial()
    timeline = ShardTimeline(transport.mine) if timeline_wanted(plan.cfg) else None
    if timeline is not None:
        svc.watchdog.enter("clock sync")
        clock_offsets(topo, plan.cfg.runtime.timeout_s)
        step_driver.timeline = timeline
    link = ServersLink(servers, topo, part)
    return _Owner(engine, rec, link, timeline, svc, step_driver, start)


class _Owner:
    """A serving rank other than the lead between steps (``engine/serving_loop.BetweenSteps``):
    its part of each step to the lead, its master shard when the lead evaluates, its state at
    checkpoints. The buffers are the lead's and the workers' alone."""

    def __init__(
        self,
        engine: ServerEngine,
        rec: ShardRecorder,
        link: ServersLink,
        timeline: ShardTimeline | None,
        svc: Any,  # runtime/services.RankServices
        driver: ServerStep,
        start: int,
    ):
        self.engine, self.rec, self.link, self.timeline, self.svc = engine, rec, link, timeline, svc
        self.driver, self.start = driver, start  # its step driver; the step it continues after
        self.stop_logged = False

    def end(self) -> None:
        """The workers ended: this owner's master shard to the lead."""
        self.svc.watchdog.enter("the end: the master shard to the lead")
        self.link.send_master(self.engine)

    def sync_buffers(self, step: int) -> None:
        pass

    def checkpoint(self, step: int) -> None:
        self.svc.watchdog.enter(f"step {step}: checkpoint (the shard to the lead)")
        self.link.send_state(self.engine)

    def after_step(self, step: int, result: StepResult) -> None:
        svc = self.svc
        svc.watchdog.enter(f"step {step}: report to the lead")
        report = self.rec.finish(result.records or [], self.engine.stats)
        report.timeline = self.timeline.take() if self.timeline is not None else None
        if svc.stop.requested and not self.stop_logged:
            svc.log.info("step %d: %s; the lead agrees the stop with the next step", step, svc.stop.reason)
            self.stop_logged = True
        report.stop = svc.stop.reason
        self.link.report(report)
        if self.link.evaluating():
            self.link.send_master(self.engine)

    def stop_agreed(self, step: int, reason: str) -> None:
        pass
