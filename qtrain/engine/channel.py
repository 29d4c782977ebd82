"""The channels the step driver (``engine/step.py``) talks to, and the in-process one.

A **worker channel** (:class:`WorkerChannel`) posts a segment's uplink (its record and packed
message) and yields the step's downlink segments; a **server channel** (:class:`ServerChannel`)
yields each segment's uplinks (records and messages in worker order) once all are in and posts
each segment's downlink. Two implement them:

- ``runtime/transport.py``: over the job's backend (``engine/backend.py``), one class per role
  (``WorkerTransport``, ``ServerTransport``: ``isend``/``irecv`` into preallocated frames,
  ``ibcast`` downlinks, deadlines that name the silent rank), which also carry the reports between
  steps (``engine/reports.py``: checkpoints, buffers, the final report);
- :class:`InProcessChannel`: the simulator's N virtual workers and its server in one process, the
  same messages handed over as Python objects, segments in index order.

Worker side: ``message_buffer(seg)``, ``send_uplink(seg, record, packed)``, ``progress()``,
``use_codecs(up, down)``, ``post_downlinks(step)``, ``downlinks(step)`` (yields
``(seg, head, message)``), ``finish_sends(step)``. Server side: ``use_codecs(up, down)``,
``post_uplinks()``, ``uplinks(step)`` (yields ``(seg, records, messages)``),
``post_downlink(seg, step, flags, packed, grad_norm)``, ``finish_downlinks(step)``, and the
per-segment instants ``down_posted_at``/``down_done_at`` of the last step. Both are
``typing.Protocol`` classes: an implementation need not inherit from them, and the type checker
(``make lint``) checks that each of the implementations above is one.

What travels is the same in both: the packed messages, byte for byte, and the fixed records of
``engine/records.py``, so a simulated run and an MPI run end with the same parameters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from qtrain.codecs.base import Codec
from qtrain.engine.partition import Partition, Segment
from qtrain.engine.records import DOWNLINK_RECORD

Downlink = tuple[Segment, np.void, torch.Tensor]  # a segment, its downlink record, its message
Uplinks = tuple[
    Segment, np.ndarray, list[torch.Tensor]
]  # a segment, its records and messages in worker order


class WorkerChannel(Protocol):
    """A worker's end of the step's messages."""

    def message_buffer(self, seg: Segment) -> torch.Tensor | None:
        """Where the worker may encode ``seg``'s message in place, or None (a tensor of its own)."""
        ...

    def send_uplink(self, seg: Segment, record: np.ndarray, packed: torch.Tensor) -> None:
        """Post ``seg``'s uplink: its record (one ``UPLINK_RECORD``, length and segment filled in
        here) and packed message."""
        ...

    def progress(self) -> None:
        """Let the posted uplinks move (never blocks)."""
        ...

    def use_codecs(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """Size the frames for a step sent with these codecs."""
        ...

    def post_downlinks(self, step: int) -> None:
        """Post the receives of step ``step``'s downlinks."""
        ...

    def downlinks(self, step: int) -> Iterator[Downlink]:
        """Every segment's downlink of step ``step``, as they complete."""
        ...

    def finish_sends(self, step: int) -> None:
        """Complete the step's uplink sends."""
        ...


class ServerChannel(Protocol):
    """A serving rank's end of the step's messages, for the segments it serves."""

    def use_codecs(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """Size the frames for a step sent with these codecs."""
        ...

    def post_uplinks(self) -> None:
        """Post the receives of every uplink of the next step."""
        ...

    def uplinks(self, step: int) -> Iterator[Uplinks]:
        """Each segment's uplinks of step ``step`` once every worker's is in."""
        ...

    def post_downlink(
        self, seg: Segment, step: int, flags: int, packed: torch.Tensor, grad_norm: float | None = None
    ) -> None:
        """Post (or queue) ``seg``'s downlink of step ``step``."""
        ...

    def finish_downlinks(self, step: int) -> None:
        """Complete the step's downlinks."""
        ...

    @property
    def down_posted_at(self) -> np.ndarray:
        """Per segment: when its last downlink was posted (perf_counter)."""
        ...

    @property
    def down_done_at(self) -> np.ndarray:
        """Per segment: when its last downlink completed at this rank (perf_counter)."""
        ...


class InProcessChannel:
    """Server side of the in-process channel; :meth:`worker` gives worker ``w``'s side."""

    def __init__(self, partition: Partition, workers: int):
        self.partition, self.workers = partition, workers
        # (record, message) per segment and worker
        self._up: list[list[tuple[np.ndarray, torch.Tensor] | None]] = [[None] * workers for _ in partition]
        self._down: list[tuple[np.void, torch.Tensor] | None] = [None] * len(partition)  # the last posted
        self.down_posted_at: np.ndarray = np.zeros(len(partition))
        self.down_done_at: np.ndarray = np.zeros(len(partition))

    def worker(self, w: int) -> _WorkerEnd:
        return _WorkerEnd(self, w)

    # ---------------------------------------------------------------- server side
    def post_uplinks(self) -> None:
        pass  # nothing to post: the workers' messages are handed over whole

    def uplinks(self, step: int) -> Iterator[Uplinks]:
        for seg in self.partition:
            entries = self._up[seg.index]
            given = [e for e in entries if e is not None and int(e[0]["step"][0]) == step]
            if len(given) != len(entries):
                missing = [w for w, e in enumerate(entries) if e is None or int(e[0]["step"][0]) != step]
                raise RuntimeError(f"step {step}, segment {seg.index}: no uplink from worker(s) {missing}")
            records = np.concatenate([r for r, _ in given])
            self._up[seg.index] = [None] * self.workers
            yield seg, records, [m for _, m in given]

    def use_codecs(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """In-process messages are tensors of any size: nothing to resize."""

    def post_downlink(
        self, seg: Segment, step: int, flags: int, packed: torch.Tensor, grad_norm: float | None = None
    ) -> None:
        head = np.zeros(1, dtype=DOWNLINK_RECORD)
        head["step"], head["flags"], head["length"], head["segment"] = step, flags, packed.numel(), seg.index
        head["grad_norm"] = grad_norm or 0.0
        self._down[seg.index] = (head[0], packed)
        self.down_posted_at[seg.index] = time.perf_counter()

    def finish_downlinks(self, step: int) -> None:
        self.down_done_at[:] = time.perf_counter()


class _WorkerEnd:
    """Worker ``w``'s side of an :class:`InProcessChannel`."""

    def __init__(self, channel: InProcessChannel, w: int):
        self.channel, self.w = channel, w

    def message_buffer(self, seg: Segment) -> torch.Tensor | None:
        return None  # each message is its own tensor, handed over as it is

    def send_uplink(self, seg: Segment, record: np.ndarray, packed: torch.Tensor) -> None:
        record["length"], record["segment"] = packed.numel(), seg.index
        self.channel._up[seg.index][self.w] = (record.copy(), packed)

    def progress(self) -> None:
        pass

    def use_codecs(self, uplink_codec: Codec, downlink_codec: Codec) -> None:
        """In-process messages are tensors of any size: nothing to resize."""

    def post_downlinks(self, step: int) -> None:
        pass

    def downlinks(self, step: int) -> Iterator[Downlink]:
        for seg in self.channel.partition:
            down = self.channel._down[seg.index]
            if down is None or int(down[0]["step"]) != step:
                raise RuntimeError(f"step {step}, segment {seg.index}: the server posted no downlink")
            yield seg, down[0], down[1]

    def finish_sends(self, step: int) -> None:
        pass


if TYPE_CHECKING:  # the type checker verifies that both ends are the driver's channels

    def _server_end(channel: InProcessChannel) -> ServerChannel:
        return channel

    def _worker_end(end: _WorkerEnd) -> WorkerChannel:
        return end
