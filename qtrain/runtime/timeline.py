"""The per-segment timeline of an MPI run (the trace's ``timeline_server`` and ``timeline_workers``
datasets, io/trace.py): when each segment of a step was ready, encoded, sent, aggregated,
broadcast, arrived and applied, on every rank, on one time axis.

The server notes its own instants as it goes; the workers' instants arrive in their uplink
records (engine/records.py), on their own clocks, which ``clock_sync.clock_offsets`` maps onto
the server's. A worker learns when its downlink arrived and was applied only after it sent this
step's records, so those instants come with the next step's records (or the final report), and
a step's worker rows are written one step late. Times are seconds since the server began the step.

With several serving ranks (``runtime.servers``) the lead writes the timeline. Every other owner
notes the same instants for its own segments on its own clock (:class:`ShardTimeline`) and sends
them, with the time fields of its segments' uplink records, in its step part
(``runtime/shard_serving.py``); the lead maps them with that owner's clock offset and completes
the step's rows once the parts are in (:meth:`TimelineRecorder.add_parts`). A segment's row in
``timeline_server`` is then its owner's.
"""

from __future__ import annotations

import time

import numpy as np

from qtrain.io.trace import TIMELINE_SERVER_DTYPE, TIMELINE_WORKER_DTYPE

# the uplink record fields the timeline reads (engine/records.py)
RECORD_TIMES = ("t_start", "t_ready", "t_sent", "prev_t_backward", "prev_t_arrived", "prev_t_applied")
SERVER_MARKS = ("uplinks_in_s", "aggregated_s", "encoded_s")


def record_times(records: list[np.ndarray]) -> np.ndarray:
    """The records' ``RECORD_TIMES`` as float64, shape (field, segment, worker)."""
    recs = np.stack(records)
    return np.stack([recs[f].astype(np.float64) for f in RECORD_TIMES])


class TimelineRecorder:
    """The lead's. ``offsets``: ``clock_sync.clock_offsets``'s (the other serving ranks', then the
    workers'), None for no timeline."""

    def __init__(self, trace, partition, topology, offsets: np.ndarray | None, every: int):
        self.trace = trace
        self.every = every if trace is not None and offsets is not None else 0
        others = len(topology.servers) - 1
        self.owner_offsets = None if offsets is None else offsets[:others]
        self.offsets = None if offsets is None else offsets[others:]
        self.several = others > 0
        self._waiting = None  # (own record times, posted_at, done_at) until the other owners' parts
        self.own = [s.index for s in partition.owned_by(0)]  # the lead's segments (owner 0's)
        self.segments = len(partition)
        self.ranks = np.asarray(topology.workers)
        self.server = np.zeros(self.segments, dtype=TIMELINE_SERVER_DTYPE)
        self.server["segment"] = np.arange(self.segments)
        self._held = None  # the previous step's worker rows, waiting for their downlink instants
        self.t0 = 0.0

    def begin_step(self, step: int, t0: float | None = None) -> None:
        """Step ``step`` began at ``t0`` (perf_counter; default now): the server's marks count from it."""
        self.step, self.t0 = step, time.perf_counter() if t0 is None else t0

    def mark(self, seg, column: str) -> None:
        """The server reached ``column`` (uplinks_in_s, aggregated_s, encoded_s) for ``seg`` now."""
        if self.every:
            self.server[column][seg.index] = time.perf_counter() - self.t0

    def end_step(self, records: list[np.ndarray], posted_at: np.ndarray, done_at: np.ndarray) -> None:
        """``records``: this step's uplink records per segment served here (arrays in worker
        order); ``posted_at``/``done_at``: the server's broadcast instants per segment (perf_counter).
        With several serving ranks the step completes in :meth:`add_parts`."""
        if not self.every:
            return
        times, posted, done = record_times(records), posted_at - self.t0, done_at - self.t0
        if self.several:
            self._waiting = (times, posted, done)
            return
        self._end(times, posted, done)

    def add_parts(self, parts: list) -> None:
        """The other owners' timelines of the step (``ShardTimeline.take``, in owner order), their
        instants mapped onto the lead's clock, into the rows of their segments."""
        if not self.every or self._waiting is None:
            return
        own_times, posted, done = self._waiting
        self._waiting = None
        times = np.zeros((own_times.shape[0], self.segments, own_times.shape[2]))
        times[:, self.own] = own_times
        posted, done = posted.copy(), done.copy()
        for part, offset in zip(parts, self.owner_offsets, strict=True):
            mine, t0, marks, p_at, d_at, owner_times = part
            shift = t0 - offset - self.t0  # its step-relative instants -> the lead's
            for column in SERVER_MARKS:
                self.server[column][mine] = marks[column] + shift
            posted[mine], done[mine] = p_at - offset - self.t0, d_at - offset - self.t0
            times[:, mine] = owner_times
        self._end(times, posted, done)

    def _end(self, times: np.ndarray, posted: np.ndarray, done: np.ndarray) -> None:
        t = dict(zip(RECORD_TIMES, (a.T for a in times), strict=True))  # each (worker, segment)
        if self._held is not None:
            self._complete(t["prev_t_backward"], t["prev_t_arrived"], t["prev_t_applied"])
        if self.step % self.every:
            self._held = None
            return
        self.server["step"] = self.step
        self.server["posted_s"], self.server["done_s"] = posted, done
        self.trace.add_timeline("timeline_server", self.server.copy())
        rows = np.zeros((len(self.ranks), self.segments), dtype=TIMELINE_WORKER_DTYPE)
        rows["step"], rows["rank"] = self.step, self.ranks[:, None]
        rows["segment"] = np.arange(self.segments)[None, :]
        rows["start_s"] = self._to_server(t["t_start"], self.t0)
        rows["encode_start_s"] = self._to_server(t["t_ready"], self.t0)
        rows["posted_s"] = self._to_server(t["t_sent"], self.t0)
        self._held, self._held_t0 = rows, self.t0

    def close(self, backward: np.ndarray, arrived: np.ndarray, applied: np.ndarray) -> None:
        """The workers' final report: (worker,) backward ends and (worker, segment) instants of
        the last step."""
        if self.every and self._held is not None:
            self._complete(np.broadcast_to(backward[:, None], arrived.shape), arrived, applied)

    def _to_server(self, worker_times: np.ndarray, t0: float) -> np.ndarray:
        """(worker, segment) instants on the workers' clocks -> seconds since the server's ``t0``."""
        return worker_times - self.offsets[:, None] - t0

    def _complete(self, backward, arrived, applied) -> None:
        rows, t0 = self._held, self._held_t0
        rows["backward_end_s"] = self._to_server(backward, t0)
        rows["arrived_s"] = self._to_server(arrived, t0)
        rows["applied_s"] = self._to_server(applied, t0)
        self.trace.add_timeline("timeline_workers", rows.reshape(-1))
        self._held = None


class ShardTimeline:
    """A serving rank other than the lead: its segments' instants of each step, on its own clock,
    for the lead (``take``): its segment indices, the step's start ``t0`` (perf_counter), the
    server marks of its segments (seconds since ``t0``), its broadcasts' posted and done instants
    (perf_counter) and its segments' record times (:func:`record_times`)."""

    def __init__(self, segments):
        self.mine = sorted(s.index for s in segments)  # the step's records come in index order
        self.marks = np.zeros(len(self.mine), dtype=[(c, "<f8") for c in SERVER_MARKS])
        self._pos = {index: i for i, index in enumerate(self.mine)}
        self.t0, self._last = 0.0, None

    def begin_step(self, step: int, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0

    def mark(self, seg, column: str) -> None:
        self.marks[column][self._pos[seg.index]] = time.perf_counter() - self.t0

    def end_step(self, records: list[np.ndarray], posted_at: np.ndarray, done_at: np.ndarray) -> None:
        self._last = (
            self.mine,
            self.t0,
            self.marks.copy(),
            posted_at[self.mine],
            done_at[self.mine],
            record_times(records),
        )

    def take(self):
        """This step's instants (once), or None."""
        last, self._last = self._last, None
        return last
