"""Co-located shards (issue 38, ``Topology.colocated``): every rank trains and also serves 1/N of
the segments, as DeepSpeed's 1-bit Adam gives each rank a slice of the vector and BytePS puts its
servers beside the workers. No rank is lost to serving, and each rank's link carries (N-1)/N of
a compressed model each way: its uplinks of the other owners' segments out, the other workers'
uplinks of its own segments in, and the mirror image on the way down.

In shape it is a reduce-scatter to each segment's owner, the owner's server step, and an
all-gather, made of the same point-to-point uplinks and per-owner broadcasts as K separate serving
ranks (``runtime/transport.py``): owner k broadcasts its segments on ``Communicators.down[k]``,
every rank with k first. What differs is a rank's messages to itself, which never reach the
backend (gloo refuses a send to oneself, and a rank cannot be both the root of a broadcast and
one of its receivers). They are handed over in this process:

- the worker's uplink of a segment it owns is left where it was encoded (its send frame); the
  server side copies it into its receive row when it posts the step's receives;
- the server side's downlink of such a segment is read by the worker side from the server's
  queued frame, before the broadcasts of the step are completed.

The order of a co-located step avoids every wait cycle (each rank waits on others only for what
they posted before waiting themselves):

1. backward posts the uplinks (other owners' segments over the backend, its own handed over);
2. ``step()`` posts the downlink receives of the other owners' segments (fixed-size codecs: all
   at once), then takes **its own server turn** (``WorkerStep.serve``: the step driver's server
   step over its own segments, ``engine/serving_loop.ServingTurns.turn``): it gathers every
   worker's uplinks (sent in their backward, before their own turn), runs the server rule, and
   posts its broadcasts without waiting for them;
3. it takes the downlinks: its own from the server side, the others' as their broadcasts arrive
   (variable-size codecs: one segment at a time, since every owner posted all of its broadcasts
   in step 2); then it completes its own broadcasts and, last, its uplink sends.

A control frame (checkpoint, buffers, end) takes the same turn between its sends and their
completion. :func:`open_colocated` gives a rank both of its channels.

Between steps, what a worker reports to the lead (checkpoint snapshots, the final report) goes
with the same ``gather`` on the control group as with separate servers; rank 0's own is handed
to its lead side, which gathers it as the root's part. The model buffers are combined by every
rank alike (:func:`combine_buffers_everywhere`: one ``allgather``), since rank 0's worker and
lead would otherwise have to answer each other inside one call.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from qtrain.codecs.base import Codec
from qtrain.engine.backend import Request
from qtrain.engine.buffers import buffer_state, combine, load_buffers
from qtrain.engine.channel import Downlink
from qtrain.engine.partition import Partition, Segment
from qtrain.engine.records import DOWNLINK_RECORD
from qtrain.engine.reports import BufferReport, ControlReport
from qtrain.engine.snapshots import to_numpy, to_torch
from qtrain.engine.topology import Topology
from qtrain.runtime.communicators import Communicators, Group, split
from qtrain.runtime.transport import DOWN, R, ServerTransport, WorkerTransport, expect_reports


class _HandedOver:
    """The request of a message handed over in this process: complete when posted."""

    def test(self) -> bool:
        return True


class ColocatedServer(ServerTransport):
    """A co-located rank's server channel over its own segments: its own worker's uplinks are taken
    from the worker side's send frames, and its broadcasts are completed by the worker side once
    it has read its own downlinks (:meth:`ColocatedWorker.downlinks`)."""

    def __init__(
        self,
        topology: Topology,
        partition: Partition,
        uplink_codec: Codec,
        downlink_codec: Codec,
        timeout_s: float,
        comms: Communicators,
    ):
        super().__init__(topology, partition, uplink_codec, downlink_codec, timeout_s, comms)
        # per segment: this rank's own worker's (frame, variable-size message) of the step
        self.local: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.partition)
        self._deferred: int | None = None  # the step whose broadcasts wait for complete_downlinks
        self.own_report: ControlReport | None = None  # rank 0's worker's, for the lead's next gather

    def _receive(self, buf: torch.Tensor, source: int, seg: Segment, tag: int) -> Request:
        if source != self.topology.rank:
            return super()._receive(buf, source, seg, tag)
        local = self.local[seg.index]
        if local is None:
            raise RuntimeError(f"rank {source}: its own uplink of segment {seg.index} was not handed over")
        frame, message = local
        src = frame if tag == seg.tag else message
        if src is None:
            raise RuntimeError(f"rank {source}: no message of segment {seg.index} was handed over")
        buf.copy_(src[: buf.numel()])
        if tag != seg.tag or message is None:  # the segment is taken: the next step hands over anew
            self.local[seg.index] = None
        return _HandedOver()

    def _root_part(self, kind: type[R]) -> ControlReport:
        """Rank 0 also works: its own worker's report, handed over, is the root's part."""
        own, self.own_report = self.own_report, None
        if own is None:
            raise RuntimeError(f"rank {self.topology.rank}: its own worker sent no {kind.__name__}")
        return own

    def finish_downlinks(self, step: int) -> None:
        """Deferred: the broadcasts complete once this rank's worker side has read its own
        downlinks and posted its receives of every other owner's (:meth:`complete_downlinks`)."""
        self._deferred = step

    def complete_downlinks(self) -> None:
        """Complete the deferred broadcasts of the step (none: nothing)."""
        if self._deferred is not None:
            step, self._deferred = self._deferred, None
            super().finish_downlinks(step)

    def own_downlink(self, seg: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        """The record bytes and the message this rank queued for segment ``seg`` (one it owns)."""
        queued = self._queued[seg.index]
        if queued is None:
            raise RuntimeError(f"segment {seg.index}: this rank's server step queued no downlink")
        head = queued[0][:DOWN]
        if self.down_fixed:
            n = int(head.numpy().view(DOWNLINK_RECORD)[0]["length"])
            return head, queued[0][DOWN : DOWN + n]
        return head, queued[1]


class ColocatedWorker(WorkerTransport):
    """A co-located rank's worker channel: the segments it owns go to and come from its own
    :class:`ColocatedServer` in this process; the others over the backend."""

    def __init__(
        self,
        topology: Topology,
        partition: Partition,
        uplink_codec: Codec,
        downlink_codec: Codec,
        device: torch.device,
        cuda_aware: bool,
        timeout_s: float,
        comms: Communicators,
        server: ColocatedServer,
    ):
        self.server = server
        codecs = (uplink_codec, downlink_codec)
        super().__init__(topology, partition, *codecs, device, cuda_aware, timeout_s, comms)

    def _remote(self, seg: Segment) -> bool:
        return self._server_of(seg) != self.topology.rank

    def report(self, report: ControlReport) -> None:
        """To the lead's next gather: rank 0's is handed to its own lead side."""
        if self.topology.is_lead:
            self.server.own_report = report
        else:
            super().report(report)

    def _post_send(self, seg: Segment, frame: torch.Tensor, message: torch.Tensor | None) -> None:
        if self._remote(seg):
            super()._post_send(seg, frame, message)
        else:
            self.server.local[seg.index] = (frame, message)

    def downlinks(self, step: int) -> Iterator[Downlink]:
        """This rank's own segments first (its server turn has queued them), then the other
        owners' as they arrive; then this rank's own broadcasts complete."""
        for seg in self.server.mine:
            head_bytes, msg = self.server.own_downlink(seg)
            head = self._check_downlink(head_bytes, seg, step)
            yield seg, head, self._on_device(msg)
        yield from super().downlinks(step)
        self.server.complete_downlinks()


def open_colocated(
    topology: Topology,
    partition: Partition,
    uplink_codec: Codec,
    downlink_codec: Codec,
    device: torch.device,
    cuda_aware: bool,
    timeout_s: float,
) -> tuple[ColocatedWorker, ColocatedServer]:
    """This co-located rank's two channels (collective: every rank splits the world here)."""
    if not topology.colocated:
        raise ValueError(f"rank {topology.rank} is not co-located: {topology.describe()}")
    comms: Communicators = split(topology)
    server = ColocatedServer(topology, partition, uplink_codec, downlink_codec, timeout_s, comms)
    worker = ColocatedWorker(
        topology, partition, uplink_codec, downlink_codec, device, cuda_aware, timeout_s, comms, server
    )
    return worker, server


def combine_buffers_everywhere(group: Group, modules: list[torch.nn.Module], policy: str) -> dict:
    """Every rank's model buffers (``modules[0]``'s, its worker replica) combined by ``policy`` in
    worker order (``engine/buffers.combine``, what one server combines) on every rank of
    ``group`` (every rank, in rank order), and adopted by each of ``modules`` (rank 0's lead
    model too): the combined buffers."""
    parts = group.member.allgather(BufferReport(to_numpy(buffer_state(modules[0]))))
    combined = combine(
        policy, [to_torch(expect_reports(BufferReport, [p], [r])[0].buffers) for r, p in enumerate(parts)]
    )
    for module in modules:
        load_buffers(module, combined)
    return combined
