"""The channels the step driver (``engine/step.py``) talks to, and the in-process one.

A **worker channel** posts a segment's uplink (its record and packed message) and yields the step's
downlink segments; a **server channel** yields each segment's uplinks (records and messages in
worker order) once all are in and posts each segment's downlink. Two implement them:

- ``runtime/transport.py``: MPI, one class per role (``WorkerTransport``, ``ServerTransport``:
  ``Isend``/``Irecv`` into preallocated frames, ``Ibcast`` downlinks, deadlines that name the
  silent rank), which also carry the pickled reports between steps (checkpoints, buffers, the
  final report);
- :class:`InProcessChannel`: the simulator's N virtual workers and its server in one process, the
  same messages handed over as Python objects, segments in index order.

Worker side: ``message_buffer(seg)``, ``send_uplink(seg, record, packed)``, ``progress()``,
``post_downlinks(step)``, ``downlinks(step)`` (yields ``(seg, head, message)``),
``finish_sends(step)``. Server side: ``post_uplinks()``, ``uplinks(step)`` (yields
``(seg, records, messages)``), ``post_downlink(seg, step, flags, packed)``, ``finish_downlinks(step)``,
and the per-segment instants ``down_posted_at``/``down_done_at`` of the last step.

What travels is the same in both: the packed messages, byte for byte, and the fixed records of
``engine/records.py``, so a simulated run and an MPI run end with the same parameters.
"""

from __future__ import annotations

import time

import numpy as np

from qtrain.engine.records import DOWNLINK_RECORD


class InProcessChannel:
    """Server side of the in-process channel; :meth:`worker` gives worker ``w``'s side."""

    def __init__(self, partition, workers: int):
        self.partition, self.workers = partition, workers
        self._up: list[list] = [[None] * workers for _ in partition]  # (record, message) per worker
        self._down: list = [None] * len(partition)  # (head, message) of the last posted step
        self.down_posted_at = np.zeros(len(partition))
        self.down_done_at = np.zeros(len(partition))

    def worker(self, w: int) -> _WorkerEnd:
        return _WorkerEnd(self, w)

    # ---------------------------------------------------------------- server side
    def post_uplinks(self) -> None:
        pass  # nothing to post: the workers' messages are handed over whole

    def uplinks(self, step: int):
        for seg in self.partition:
            entries = self._up[seg.index]
            missing = [w for w, e in enumerate(entries) if e is None or int(e[0]["step"][0]) != step]
            if missing:
                raise RuntimeError(f"step {step}, segment {seg.index}: no uplink from worker(s) {missing}")
            records = np.concatenate([r for r, _ in entries])
            self._up[seg.index] = [None] * self.workers
            yield seg, records, [m for _, m in entries]

    def use_codecs(self, uplink_codec, downlink_codec) -> None:
        """In-process messages are tensors of any size: nothing to resize."""

    def post_downlink(self, seg, step: int, flags: int, packed, grad_norm: float | None = None) -> None:
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

    def message_buffer(self, seg):
        return None  # each message is its own tensor, handed over as it is

    def send_uplink(self, seg, record: np.ndarray, packed) -> None:
        record["length"], record["segment"] = packed.numel(), seg.index
        self.channel._up[seg.index][self.w] = (record.copy(), packed)

    def progress(self) -> None:
        pass

    def use_codecs(self, uplink_codec, downlink_codec) -> None:
        """In-process messages are tensors of any size: nothing to resize."""

    def post_downlinks(self, step: int) -> None:
        pass

    def downlinks(self, step: int):
        for seg in self.channel.partition:
            head, msg = self.channel._down[seg.index]
            if int(head["step"]) != step:
                raise RuntimeError(f"step {step}, segment {seg.index}: the server posted no downlink")
            yield seg, head, msg

    def finish_sends(self, step: int) -> None:
        pass
