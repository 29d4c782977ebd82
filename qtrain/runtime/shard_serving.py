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
downlinks are posted: the workers never wait for them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from qtrain.engine.engine_state import SegmentStats
from qtrain.engine.recorder import WorkerReport, timed
from qtrain.engine.shards import join_states, join_stats
from qtrain.engine.snapshots import to_numpy, to_torch
from qtrain.io.net_counters import NetCounters

WORKER_SUMS = ("encode_s", "err_sq", "ref_sq", "ef_sq")  # per worker, summed over segments


@dataclass
class StepPart:
    """One serving rank's part of a step (not the lead's)."""

    up: list = field(default_factory=list)  # (sizes in worker order, numel) per segment
    down: list = field(default_factory=list)  # (size, numel) per segment
    times: dict = field(default_factory=dict)  # phase -> seconds
    workers: dict = field(default_factory=dict)  # WORKER_SUMS -> per-worker sums over its segments
    stats: tuple = ({}, False)  # its engine's SegmentStats (parts, has_ef)
    wire: tuple = (0, 0)  # bytes its own link received and sent (QTRAIN_WIRE_DEVICE), or zeros
    timeline: tuple | None = None  # its segments' instants (runtime/timeline.ShardTimeline.take)
    stop: str | None = None  # the stop a signal on this serving rank asked for (the lead agrees it)


class ShardRecorder:
    """What the server step needs of a recorder on a serving rank that is not the lead: phase
    times (the watchdog is told each phase) and bytes, gathered into the step's :class:`StepPart`."""

    def __init__(self, watchdog=None, counters=None):
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
    def phase(self, name: str, seg=None):
        where = f" (segment {seg.index})" if seg is not None else ""
        self.enter(f"step {self.step}: {name}{where}")
        with timed(self.add_time, name):
            yield

    def uplinks(self, sizes: list[int], seg) -> None:
        self.part.up.append((list(sizes), seg.numel))

    def downlink(self, size: int, seg) -> None:
        self.part.down.append((int(size), seg.numel))

    def finish(self, records: list, stats: SegmentStats) -> StepPart:
        """The step's part, with the workers' sums over this rank's segments."""
        part = self.part
        part.workers = {k: np.sum([r[k] for r in records], axis=0) for k in WORKER_SUMS}
        part.stats = (dict(stats.parts), stats.has_ef)
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


def down_stats(lead: SegmentStats, parts: list[StepPart]) -> dict:
    """The downlink statistics of every owner's segments, as one server's."""
    others = []
    for p in parts:
        s = SegmentStats()
        s.parts, s.has_ef = dict(p.stats[0]), p.stats[1]
        others.append(s)
    return join_stats([lead, *others]).summary("down")


class ServersLink:
    """The servers' communicator from either side (``group``: ``Communicators.servers``; the lead
    is its rank 0)."""

    def __init__(self, group, topology, partition):
        self.group, self.topology, self.partition = group, topology, partition
        self.comm = group.comm
        self.root = group.local(topology.server)

    # ------------------------------------------------------------------ the lead
    def collect(self) -> list[StepPart]:
        """Every other owner's part of the step that just ended, in owner order."""
        return self.comm.gather(None, root=self.root)[1:]

    def tell(self, evaluating: bool) -> None:
        self.comm.bcast(bool(evaluating), root=self.root)

    def gather_master(self, params: torch.Tensor) -> None:
        """Every other owner's master shard into ``params`` (the lead's model, whose own shard is
        the lead engine's master already)."""
        for owner, shard in enumerate(self.comm.gather(None, root=self.root)[1:], start=1):
            params[self.partition.shard(owner)].copy_(torch.from_numpy(shard))

    def gather_state(self, lead_engine, params: torch.Tensor) -> JoinedServer:
        """Every owner's state, master and replica joined: what one server would checkpoint."""
        parts = self.comm.gather(None, root=self.root)[1:]
        for owner, part in enumerate(parts, start=1):
            params[self.partition.shard(owner)].copy_(torch.from_numpy(part["master"]))
        state = join_states([lead_engine.state_dict(), *(to_torch(p["state"]) for p in parts)])
        if lead_engine.mode == "weights":
            replica = torch.cat([lead_engine.replica, *(torch.from_numpy(p["replica"]) for p in parts)])
        else:
            replica = params
        return JoinedServer(params, replica, state)

    # ------------------------------------------------------------------ another owner
    def report(self, part: StepPart) -> None:
        self.comm.gather(part, root=self.root)

    def evaluating(self) -> bool:
        return self.comm.bcast(None, root=self.root)

    def send_master(self, engine) -> None:
        self.comm.gather(engine.master.detach().cpu().numpy(), root=self.root)

    def send_state(self, engine) -> None:
        self.comm.gather(
            {
                "master": engine.master.detach().cpu().numpy(),
                "replica": engine.replica.detach().cpu().numpy(),
                "state": to_numpy(engine.state_dict()),
            },
            root=self.root,
        )


def total_square_over(group):
    """The step driver's ``total_square`` with several serving ranks: every owner's per-segment
    sums of squares of its means, exchanged on the servers' communicator, added in segment order
    (what one server adds: clipping's norm does not depend on K)."""

    def total(parts: dict[int, float]) -> float:
        merged: dict[int, float] = {}
        for p in group.comm.allgather(parts):
            merged.update(p)
        return sum(merged[k] for k in sorted(merged))

    return total


@dataclass
class JoinedServer:
    """Every owner's shards joined, with the interface the checkpointer reads."""

    master: torch.Tensor
    replica: torch.Tensor
    state: dict

    def state_dict(self) -> dict:
        return self.state


def serve_shard(plan, model, transport, svc, resume) -> None:
    """A serving rank other than the lead: serve its shard until the workers end, answering the
    lead after every step, at evaluations, checkpoints and the end. ``model``: its copy of the
    model, whose shard the engine serves (restored from ``resume``, a cut the lead scattered)."""
    from qtrain.engine.records import FLAG_BUFFERS, FLAG_CHECKPOINT, FLAG_END
    from qtrain.engine.step import ServerStep
    from qtrain.runtime.clock_sync import clock_offsets, timeline_wanted
    from qtrain.runtime.faults import maybe_fail
    from qtrain.runtime.timeline import ShardTimeline

    topo, part = plan.topology, plan.partition
    shard = part.shard(topo.owner)
    engine = plan.server_engine(model.params[shard], owner=topo.owner)
    rec = ShardRecorder(svc.watchdog, NetCounters.from_env())
    step_driver = ServerStep(
        engine, transport, part, rec, names=[f"rank {r}" for r in topo.workers], segments=transport.mine
    )
    step_driver.before_step = lambda step: maybe_fail(svc.fault, topo.rank, step)
    step_driver.total_square = total_square_over(transport.comms.servers)
    start = 0
    if resume is not None:
        t = resume.tree
        engine.master.copy_(t["params"])
        engine.replica.copy_(t["replica_params"])
        engine.load_state_dict(t["server"])
        start = resume.step
    elif plan.setup.algorithm.downlink_mode == "weights":
        svc.watchdog.enter("initial weights broadcast")
        step_driver.send_initial()
    timeline = timeline_wanted(plan.cfg)
    if timeline:
        svc.watchdog.enter("clock sync")
        clock_offsets(topo, plan.cfg.runtime.timeout_s)
        step_driver.timeline = ShardTimeline(transport.mine)
    link = ServersLink(transport.comms.servers, topo, part)
    step, stop_logged = start + 1, False
    while True:
        result = step_driver.run(step)
        if result.control == FLAG_END:
            svc.watchdog.enter("the end: the master shard to the lead")
            link.send_master(engine)
            return
        if result.control == FLAG_BUFFERS:  # between the lead and the workers
            continue
        if result.control == FLAG_CHECKPOINT:
            svc.watchdog.enter(f"step {step - 1}: checkpoint (the shard to the lead)")
            link.send_state(engine)
            continue
        svc.watchdog.enter(f"step {step}: report to the lead")
        report = rec.finish(result.records, engine.stats)
        report.timeline = step_driver.timeline.take() if timeline else None
        if svc.stop.requested and not stop_logged:
            svc.log.info("step %d: %s; the lead agrees the stop with the next step", step, svc.stop.reason)
            stop_logged = True
        report.stop = svc.stop.reason
        link.report(report)
        if link.evaluating():
            link.send_master(engine)
        step += 1
