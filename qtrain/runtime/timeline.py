"""The per-segment timeline of an MPI run (the trace's ``timeline_server`` and ``timeline_workers``
datasets, io/trace.py): when each segment of a step was ready, encoded, sent, aggregated,
broadcast, arrived and applied, on every rank, on one time axis.

The server notes its own instants as it goes; the workers' instants arrive in their uplink
records (engine/records.py), on their own clocks, which ``clock_sync.clock_offsets`` maps onto
the server's. A worker learns when its downlink arrived and was applied only after it sent this
step's records, so those instants come with the next step's records (or the final report), and
a step's worker rows are written one step late. Times are seconds since the server began the step.
"""

from __future__ import annotations

import time

import numpy as np

from qtrain.io.trace import TIMELINE_SERVER_DTYPE, TIMELINE_WORKER_DTYPE


class TimelineRecorder:
    def __init__(self, trace, partition, topology, offsets: np.ndarray | None, every: int):
        self.trace = trace
        self.every = every if trace is not None and offsets is not None else 0
        self.offsets = offsets
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
        """``records``: this step's uplink records per segment (arrays in worker order);
        ``posted_at``/``done_at``: the server's broadcast instants per segment (perf_counter)."""
        if not self.every:
            return
        recs = np.stack(records)  # (segment, worker)
        if self._held is not None:
            self._complete(recs["prev_t_backward"].T, recs["prev_t_arrived"].T, recs["prev_t_applied"].T)
        if self.step % self.every:
            self._held = None
            return
        self.server["step"] = self.step
        self.server["posted_s"] = posted_at - self.t0
        self.server["done_s"] = done_at - self.t0
        self.trace.add_timeline("timeline_server", self.server.copy())
        rows = np.zeros((len(self.ranks), self.segments), dtype=TIMELINE_WORKER_DTYPE)
        rows["step"], rows["rank"] = self.step, self.ranks[:, None]
        rows["segment"] = np.arange(self.segments)[None, :]
        rows["start_s"] = self._to_server(recs["t_start"].T, self.t0)
        rows["encode_start_s"] = self._to_server(recs["t_ready"].T, self.t0)
        rows["posted_s"] = self._to_server(recs["t_sent"].T, self.t0)
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
