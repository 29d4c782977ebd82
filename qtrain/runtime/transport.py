"""Packed uint8 messages between workers and the server, segment by segment, over the job's
backend (``engine/backend.py``: MPI's buffer API or torch.distributed, no pickles). Which rank
serves a segment, and which ranks work, comes from the Topology; the segments and their tags from
the Partition.

Uplink (worker -> the segment's server), per step and segment:
  fixed-size codecs:    one frame = uplink record + the message (size known from the config), sent
                        with ``Isend`` into the server's preallocated per-(segment, worker) rows;
                        the worker encodes straight into its frame when frame and data share a device.
  variable-size codecs: the record first (it carries the message length), then the message with
                        the segment's second tag; the server posts that receive once it knows the length.
Downlink (the segment's server -> every worker), per step and segment: the downlink record +
message in one ``Ibcast`` (fixed size), or record then message in two (variable size), on the
owner's own communicator (``runtime/communicators.py``: with K serving ranks each broadcasts on
one of its own, so owners never queue behind each other; with one, the world's).

A serving rank handles only the segments it owns (``Partition.owned_by``). It posts every receive
of a step at once (``post_uplinks``) and takes the segments in the order their uplinks complete
(``uplinks``, a ``Testsome`` loop); it queues each segment's downlink as soon as it is encoded
(``post_downlink``) and waits for the broadcasts once, at the end of the step. MPI matches
non-blocking collectives in the order each rank posts them, so an owner's broadcasts go out in
segment order: its k-th segment's is posted once its first k are queued. Workers post all of a
step's fixed-size broadcasts at once and apply the segments as they complete (``downlinks``).
Point-to-point receives (not ``Gather``) let the deadline name exactly which worker is silent;
``Ibcast`` lets workers wait with a deadline too. See docs/architecture.md.

CUDA-aware MPI: device tensors go to the backend directly after the producing stream is
synchronized (``Backend.device_buffers``); otherwise frames are staged through preallocated host
buffers (pinned when CUDA is present).

Each role has its own class (``open_transport`` picks it): :class:`WorkerTransport`, the worker
channel of the step driver, and :class:`ServerTransport`, the server channel
(``engine/channel.py``: the type checker checks that each is one). Both also carry the reports
between steps (``engine/reports.py``: checkpoint snapshots, model buffers, the final report):
``report``/``shared`` on a worker, ``reports``/``share`` on the serving rank, pickled collectives
that never run on the per-step hot path; the receiving side names the kind of report it expects,
and a rank that sent another is named.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from qtrain.codecs.base import Codec
from qtrain.engine.backend import Backend, Request
from qtrain.engine.channel import Downlink, Uplinks
from qtrain.engine.partition import Partition, Segment
from qtrain.engine.records import DOWNLINK_RECORD, UPLINK_RECORD
from qtrain.engine.reports import BufferReport, ControlReport
from qtrain.engine.topology import Topology
from qtrain.runtime.communicators import Communicators, Group, split
from qtrain.runtime.waiting import wait_all, wait_some

if TYPE_CHECKING:
    from qtrain.engine.channel import ServerChannel, WorkerChannel

UP = UPLINK_RECORD.itemsize
DOWN = DOWNLINK_RECORD.itemsize


def _host_buffer(nbytes: int, device: torch.device) -> torch.Tensor:
    buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf.pin_memory() if device.type == "cuda" else buf


R = TypeVar("R", bound=ControlReport)


def _check_record(rec: np.void, kind: str, rank: int, max_bytes: int, seg: Segment, step: int) -> None:
    """A record must be for this step and segment and announce at most ``max_bytes``."""
    n, got_step, got_seg = int(rec["length"]), int(rec["step"]), int(rec["segment"])
    if n > max_bytes or got_step != step or got_seg != seg.index:
        raise RuntimeError(
            f"rank {rank} sent a {n}-byte {kind} for step {got_step}, segment {got_seg}; expected at "
            f"most {max_bytes} bytes for step {step}, segment {seg.index}"
        )


class _Transport:
    """What both sides know: the segments, each one's largest uplink and downlink message, its
    serving rank, and the deadline of every wait."""

    def __init__(
        self,
        topology: Topology,
        partition: Partition,
        uplink_codec: Codec,
        downlink_codec: Codec,
        timeout_s: float,
        comms: Communicators | None = None,
    ):
        self.topology, self.partition = topology, partition
        if topology.backend is None:
            raise ValueError("a transport needs the job's backend (Topology.backend)")
        self.backend: Backend = topology.backend
        if comms is None:  # one serving rank: the whole job for everything (``split`` needs no call)
            world = Group(topology.backend, tuple(range(topology.world_size)))
            comms = Communicators((world,), world) if len(topology.servers) == 1 else split(topology)
        self.comms = comms
        self.control = comms.control
        self.timeout_s = timeout_s
        self._size(uplink_codec, downlink_codec)

    def _size(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """Every segment's largest message and frame each way with these codecs."""
        self.codecs = (uplink_codec, downlink_codec)
        partition = self.partition
        self.up_fixed, self.down_fixed = uplink_codec.fixed_size, downlink_codec.fixed_size
        self.up_max = [uplink_codec.wire_bytes(s.numel) for s in partition]
        self.down_max = [downlink_codec.wire_bytes(s.numel) for s in partition]
        self.up_frame = [UP + (m if self.up_fixed else 0) for m in self.up_max]
        self.down_frame = [DOWN + (m if self.down_fixed else 0) for m in self.down_max]

    def use_codecs(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """Size the frames for a step sent with these codecs (``engine/link_plan.py``: an
        uncompressed warm-up's ``none``, then the configured ones). Every rank switches at the
        same step, between two steps, so no message is in flight in the old frames."""
        if (uplink_codec, downlink_codec) == self.codecs:
            return
        self._size(uplink_codec, downlink_codec)
        self._allocate()

    def _allocate(self) -> None:
        """Allocate the frames of the current codecs (each side its own)."""
        raise NotImplementedError

    def _server_of(self, seg: Segment) -> int:
        return self.topology.servers[seg.owner]

    def _broadcast(self, seg: Segment, buf: torch.Tensor) -> Request:
        """The broadcast of ``buf`` from segment ``seg``'s owner, on the owner's group."""
        group = self.comms.down[seg.owner]
        return group.member.ibcast(buf, root=group.local(self._server_of(seg)))

    @staticmethod
    def _where(step: int, seg: Segment) -> str:
        return f" (step {step}, segment {seg.index})"


def open_transport(
    topology: Topology,
    partition: Partition,
    uplink_codec: Codec,
    downlink_codec: Codec,
    device: torch.device,
    cuda_aware: bool,
    timeout_s: float,
) -> WorkerTransport | ServerTransport:
    """This rank's side: a :class:`ServerTransport` on a serving rank, else a :class:`WorkerTransport`
    (collective: with several serving ranks every rank splits the world here)."""
    comms = split(topology)
    if topology.is_server:
        return ServerTransport(topology, partition, uplink_codec, downlink_codec, timeout_s, comms)
    return WorkerTransport(
        topology, partition, uplink_codec, downlink_codec, device, cuda_aware, timeout_s, comms
    )


class WorkerTransport(_Transport):
    """A worker's channel: its uplink frames (on the device with CUDA-aware MPI, else staged in
    host memory) and the downlink frames it receives into."""

    def __init__(
        self,
        topology: Topology,
        partition: Partition,
        uplink_codec: Codec,
        downlink_codec: Codec,
        device: torch.device,
        cuda_aware: bool,
        timeout_s: float,
        comms: Communicators | None = None,
    ):
        super().__init__(topology, partition, uplink_codec, downlink_codec, timeout_s, comms)
        self.device = device
        self.cuda_aware = cuda_aware and device.type == "cuda"
        self._allocate()
        self._frames_on_device = (device if self.cuda_aware else torch.device("cpu")) == device
        self._pending_send: list[tuple[Request, int]] = []  # (request, peer rank)
        self._down_reqs: list[Request | None] = []

    def _allocate(self) -> None:
        def buffer(n: int) -> torch.Tensor:
            if self.cuda_aware:
                return torch.empty(n, dtype=torch.uint8, device=self.device)
            return _host_buffer(n, self.device)

        self._send = [buffer(n) for n in self.up_frame]
        # the messages of variable-size codecs, apart from their records (none when fixed-size)
        self._send_msgs = [] if self.up_fixed else [buffer(m) for m in self.up_max]
        self._down_t = [buffer(n) for n in self.down_frame]
        self._down_msgs = [] if self.down_fixed else [buffer(m) for m in self.down_max]

    def report(self, report: ControlReport) -> None:
        """Send ``report`` to the lead serving rank, with every worker (:meth:`ServerTransport.reports`)."""
        self.control.member.gather(report, root=self.control.local(self.topology.server))

    def shared(self, kind: type[R]) -> R:
        """What the lead serving rank sends every worker (:meth:`ServerTransport.share`), a ``kind``."""
        got = self.control.member.bcast(None, root=self.control.local(self.topology.server))
        return expect_reports(kind, [got], [self.topology.server])[0]

    def message_buffer(self, seg: Segment) -> torch.Tensor | None:
        """Where this worker may encode segment ``seg``'s message in place (its slot of the send
        frame), or None when the frames live on another device than the data."""
        if not self._frames_on_device:
            return None
        return self._send[seg.index][UP:] if self.up_fixed else self._send_msgs[seg.index]

    def send_uplink(self, seg: Segment, record: np.ndarray, packed: torch.Tensor) -> None:
        """Post this worker's record + message of one segment (completed after the downlink)."""
        n = packed.numel()
        record["length"], record["segment"] = n, seg.index
        rec_bytes = torch.from_numpy(record.view(np.uint8).copy())
        if self.cuda_aware and packed.device.type == "cuda":
            torch.cuda.current_stream(packed.device).synchronize()
        frame = self._send[seg.index]
        frame[:UP].copy_(rec_bytes)
        target = frame[UP : UP + n] if self.up_fixed else self._send_msgs[seg.index][:n]
        if target.data_ptr() != packed.data_ptr():
            target.copy_(packed)
        if self.cuda_aware:
            torch.cuda.current_stream(self.device).synchronize()
        self._post_send(seg, frame, None if self.up_fixed else target)

    def _post_send(self, seg: Segment, frame: torch.Tensor, message: torch.Tensor | None) -> None:
        """Send a filled frame (and a variable-size codec's message after it) to the segment's server."""
        dest = self._server_of(seg)
        self._pending_send.append((self.backend.isend(frame, dest=dest, tag=seg.tag), dest))
        if message is not None:
            self._pending_send.append((self.backend.isend(message, dest=dest, tag=seg.tag + 1), dest))

    def progress(self) -> None:
        """Let the posted uplinks move (MPI progresses a large send only inside MPI calls): a
        non-blocking test, called after each segment posted during backward."""
        for request, _ in self._pending_send:
            request.test()

    def finish_sends(self, step: int) -> None:
        """Complete this step's uplink sends (their frames are reused next step)."""
        if self._pending_send:
            requests, peers = zip(*self._pending_send, strict=True)
            wait_all(list(requests), self.timeout_s, "uplink send", list(peers), f" (step {step})")
            self._pending_send = []

    def post_downlinks(self, step: int) -> None:
        """Post this step's downlink receives: with fixed-size downlinks one ``Ibcast`` per segment,
        all at once, in segment order (the order the server posts them in); variable-size ones are
        posted one at a time by :meth:`downlinks` (the message size comes with the record). Each
        on its owner's communicator, where the owner posts its own in the same order."""
        self._down_step = step
        self._down_reqs = (
            [self._broadcast(s, self._down_t[s.index]) if self._remote(s) else None for s in self.partition]
            if self.down_fixed
            else []
        )

    def _remote(self, seg: Segment) -> bool:
        """Whether segment ``seg``'s downlink comes over the backend (a co-located rank's own do not)."""
        return True

    def downlinks(self, step: int) -> Iterator[Downlink]:
        """Yield ``(segment, record, message)`` for every segment of this step's downlink: in the
        order they complete (fixed-size), or in segment order (variable-size). The message is on
        this worker's device."""
        if not self.down_fixed:
            for seg in self.partition:
                if self._remote(seg):
                    yield (seg, *self._recv_variable(seg, step))
            return
        reqs = self._down_reqs
        left = sum(r is not None for r in reqs)
        while left:
            done = wait_some(reqs, self.timeout_s, "downlink broadcast", lambda: self._silent_down(step))
            for k in done:
                reqs[k] = None
                left -= 1
                seg = self.partition.segments[k]
                frame = self._down_t[k]
                head = self._check_downlink(frame[:DOWN], seg, step)
                yield seg, head, self._on_device(frame[DOWN : DOWN + int(head["length"])])

    def _silent_down(self, step: int) -> str:
        pending = [k for k, r in enumerate(self._down_reqs) if r is not None]
        seg = self.partition.segments[pending[0]]
        return f"{self._where(step, seg)} from rank(s) {self._server_of(seg)}"

    def _recv_variable(self, seg: Segment, step: int) -> tuple[np.void, torch.Tensor]:
        root = self._server_of(seg)
        frame = self._down_t[seg.index]
        req = self._broadcast(seg, frame)
        wait_all([req], self.timeout_s, "downlink broadcast", [root], self._where(step, seg))
        head = self._check_downlink(frame[:DOWN], seg, step)
        msg = self._down_msgs[seg.index][: int(head["length"])]
        req = self._broadcast(seg, msg)
        wait_all([req], self.timeout_s, "downlink broadcast (message)", [root], self._where(step, seg))
        return head, self._on_device(msg)

    def _check_downlink(self, head_bytes: torch.Tensor, seg: Segment, step: int) -> np.void:
        head = head_bytes.cpu().numpy().view(DOWNLINK_RECORD)[0].copy()
        _check_record(head, "downlink", self._server_of(seg), self.down_max[seg.index], seg, step)
        return head

    def _on_device(self, msg: torch.Tensor) -> torch.Tensor:
        return msg.to(self.device, non_blocking=True) if msg.device != self.device else msg


class ServerTransport(_Transport):
    """A serving rank's channel for the segments it owns (``mine``, in segment order): a receive
    row per (segment, worker), and the downlink frames."""

    def __init__(
        self,
        topology: Topology,
        partition: Partition,
        uplink_codec: Codec,
        downlink_codec: Codec,
        timeout_s: float,
        comms: Communicators | None = None,
    ):
        super().__init__(topology, partition, uplink_codec, downlink_codec, timeout_s, comms)
        if topology.owner is None:
            raise ValueError(f"rank {topology.rank} serves no segment: {topology.describe()}")
        self.mine = partition.owned_by(topology.owner)
        self._allocate()
        # per segment: the buffers to broadcast, once queued
        self._queued: list[list[torch.Tensor] | None] = [None] * len(partition)
        self._down_reqs: list[Request | None] = []
        self._down_of: list[int] = []  # the segment of each posted broadcast
        self.down_posted_at: np.ndarray = np.zeros(len(partition))  # perf_counter instants, this step
        self.down_done_at: np.ndarray = np.zeros(len(partition))
        self._next_down = 0  # the first of ``mine`` whose broadcast is not posted yet
        self._up_reqs: list[Request | None] = []
        self._up_of: list[tuple[int, int]] = []  # (segment, worker index) of each posted receive
        self._missing: list[int] = []  # per segment: the receives of this step still pending

    def _allocate(self) -> None:
        workers = self.topology.num_workers
        owned = {s.index for s in self.mine}
        # per owned segment: a receive row per worker, its downlink frame
        self._recv = {
            k: torch.empty((workers, n), dtype=torch.uint8) for k, n in enumerate(self.up_frame) if k in owned
        }
        # variable-size messages, apart from their records (fixed-size ones arrive inside their frames)
        self._recv_msgs: dict[int, list[torch.Tensor]] = {}
        if not self.up_fixed:
            self._recv_msgs = {
                k: [torch.empty(m, dtype=torch.uint8) for _ in range(workers)]
                for k, m in enumerate(self.up_max)
                if k in owned
            }
        self._down = {
            k: torch.empty(n, dtype=torch.uint8) for k, n in enumerate(self.down_frame) if k in owned
        }

    def reports(self, kind: type[R]) -> list[R]:
        """Every worker's :meth:`WorkerTransport.report`, in worker order (the lead only): each a
        ``kind``, or a RuntimeError names the rank that sent something else."""
        control = self.control
        parts = control.member.gather(self._root_part(kind), root=control.local(self.topology.server))
        if parts is None:  # gather gives the list on its root, and the lead is the root
            raise RuntimeError(f"rank {self.topology.rank} gathered the workers' reports but is not the lead")
        workers = self.topology.workers
        return expect_reports(kind, [parts[control.local(r)] for r in workers], workers)

    def _root_part(self, kind: type[R]) -> ControlReport | None:
        """What the lead itself gives the workers' gather: nothing (it does not work)."""
        return None

    def share(self, report: BufferReport) -> None:
        """Send ``report`` to every worker (:meth:`WorkerTransport.shared`; the lead only)."""
        self.control.member.bcast(report, root=self.control.local(self.topology.server))

    def post_uplinks(self) -> None:
        """Post the receives of every segment of this step, from every worker (the messages of
        variable-size codecs follow once their records are in, see :meth:`uplinks`)."""
        workers = self.topology.workers
        self._up_reqs, self._up_of = [], []
        for seg in self.mine:
            rows = self._recv[seg.index]
            for i, r in enumerate(workers):
                self._up_reqs.append(self._receive(rows[i], r, seg, seg.tag))
                self._up_of.append((seg.index, i))
        self._missing = [len(workers)] * len(self.partition)

    def uplinks(self, step: int) -> Iterator[Uplinks]:
        """Yield ``(segment, records, messages)`` for each segment as soon as every worker's copy
        of it is in (``Testsome`` over all of the step's receives: segments in the order they
        complete); records and messages in worker order."""
        workers, reqs = list(self.topology.workers), self._up_reqs
        records: dict[int, np.ndarray] = {}  # per segment, once every worker's record is in
        left = len(self.mine)
        while left:
            done = wait_some(reqs, self.timeout_s, "uplink gather", lambda: self._silent_up(step))
            complete = []
            for j in done:
                reqs[j] = None
                k = self._up_of[j][0]
                self._missing[k] -= 1
                if self._missing[k]:
                    continue
                seg = self.partition.segments[k]
                if k not in records:
                    records[k] = self._check_uplinks(seg, step, workers)
                    if not self.up_fixed:  # the records are in: now the messages, of known length
                        self._post_messages(seg, records[k]["length"], workers)
                        continue
                complete.append(k)
            for k in sorted(complete):
                left -= 1
                seg, lengths = self.partition.segments[k], [int(n) for n in records[k]["length"]]
                if self.up_fixed:
                    rows = self._recv[k]
                    messages = [rows[i, UP : UP + n] for i, n in enumerate(lengths)]
                else:
                    messages = [self._recv_msgs[k][i][:n] for i, n in enumerate(lengths)]
                yield seg, records[k], messages

    def _silent_up(self, step: int) -> str:
        """Where the gather stalls: the lowest incomplete segment and the workers it waits for."""
        pending = [self._up_of[j] for j, r in enumerate(self._up_reqs) if r is not None]
        k = min(k for k, _ in pending)
        ranks = sorted({self.topology.workers[i] for kk, i in pending if kk == k})
        return f"{self._where(step, self.partition.segments[k])} from rank(s) {', '.join(map(str, ranks))}"

    def _check_uplinks(self, seg: Segment, step: int, workers: list[int]) -> np.ndarray:
        records = self._recv[seg.index][:, :UP].numpy().copy().view(UPLINK_RECORD).reshape(-1)
        for rank, rec in zip(workers, records, strict=True):
            _check_record(rec, "uplink", rank, self.up_max[seg.index], seg, step)
        return records

    def _post_messages(self, seg: Segment, lengths: np.ndarray, workers: list[int]) -> None:
        bufs = self._recv_msgs[seg.index]
        for i, (r, n) in enumerate(zip(workers, lengths, strict=True)):
            self._up_reqs.append(self._receive(bufs[i][: int(n)], r, seg, seg.tag + 1))
            self._up_of.append((seg.index, i))
        self._missing[seg.index] = len(workers)

    def _receive(self, buf: torch.Tensor, source: int, seg: Segment, tag: int) -> Request:
        """Post the receive of worker rank ``source``'s frame (``tag``: the segment's) or
        message (its second tag) of segment ``seg`` into ``buf``."""
        return self.backend.irecv(buf, source=source, tag=tag)

    def post_downlink(
        self, seg: Segment, step: int, flags: int, packed: torch.Tensor, grad_norm: float | None = None
    ) -> None:
        """Queue segment ``seg``'s downlink. Its broadcast is posted as soon as it and every lower
        segment this rank owns are queued: MPI matches non-blocking collectives in the order each
        rank posts them, and the workers post theirs in segment order. :meth:`finish_downlinks`
        completes them."""
        packed = packed.cpu().contiguous()
        n = packed.numel()
        head = np.zeros(1, dtype=DOWNLINK_RECORD)
        head["step"], head["flags"], head["length"], head["segment"] = step, flags, n, seg.index
        head["grad_norm"] = grad_norm or 0.0
        frame = self._down[seg.index]
        frame[:DOWN].copy_(torch.from_numpy(head.view(np.uint8)))
        if self.down_fixed:
            frame[DOWN : DOWN + n].copy_(packed)
            self._queued[seg.index] = [frame]
        else:
            self._queued[seg.index] = [frame[:DOWN], packed]
        mine = self.mine
        while self._next_down < len(mine):
            nxt = mine[self._next_down]
            queued = self._queued[nxt.index]
            if queued is None:
                break
            for buf in queued:
                self._down_reqs.append(self._broadcast(nxt, buf))
                self._down_of.append(nxt.index)
            self.down_posted_at[nxt.index] = time.perf_counter()
            self._next_down += 1

    def finish_downlinks(self, step: int) -> None:
        """Complete this step's downlink broadcasts (their frames are reused next step), noting
        when each segment's completed at this rank in ``down_done_at``."""
        if self._next_down != len(self.mine):
            first = self.mine[self._next_down].index
            raise RuntimeError(f"step {step}: downlinks of segments {first}.. were never queued")
        reqs = self._down_reqs
        while any(r is not None for r in reqs):
            for j in wait_some(reqs, self.timeout_s, "downlink broadcast", lambda: f" (step {step})"):
                reqs[j] = None
                self.down_done_at[self._down_of[j]] = time.perf_counter()
        self._down_reqs, self._down_of, self._next_down = [], [], 0
        self._queued = [None] * len(self.partition)


def expect_reports(kind: type[R], reports: Sequence[object], ranks: Sequence[int]) -> list[R]:
    """``reports`` (from ``ranks``, in that order), each a ``kind``; else a RuntimeError naming the
    first rank that sent something else (the ranks disagree on what happens between steps)."""
    out: list[R] = []
    for rank, report in zip(ranks, reports, strict=True):
        if not isinstance(report, kind):
            raise RuntimeError(
                f"rank {rank} sent a {type(report).__name__} where a {kind.__name__} was expected"
            )
        out.append(report)
    return out


if TYPE_CHECKING:  # the type checker verifies that each side is the step driver's channel

    def _worker_channel(transport: WorkerTransport) -> WorkerChannel:
        return transport

    def _server_channel(transport: ServerTransport) -> ServerChannel:
        return transport
