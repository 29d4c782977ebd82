"""Each worker's (and each other serving rank's) clock offset to the lead serving rank's, so that
the trace's timeline puts every rank's instants on one axis.

Cristian's method (Cristian 1989, "Probabilistic clock synchronization"): the server notes its
``perf_counter`` t0, pings the worker, the worker answers with its own ``perf_counter`` tw, the
server notes t1 on the answer; then tw - (t0 + t1) / 2 is the worker's offset, uncertain by at
most half the round trip (t1 - t0). Of ``ROUNDS`` pings the one with the shortest round trip is
kept. Measured once at start-up: two ``perf_counter`` clocks (CLOCK_MONOTONIC) drift apart by a
few parts per million, about 10 microseconds in the first 10 seconds of a run; across hosts the
error is half the network round trip (tens of microseconds on a cluster).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from qtrain.runtime.waiting import wait_all

CLOCK_TAG = 3  # below partition.TAG_BASE: a control message
ROUNDS = 8


def timeline_wanted(cfg) -> bool:
    """Whether the run records a timeline, the only user of the offsets (every rank agrees). A
    co-located run records none yet: its ranks' instants of serving and of working interleave in
    one process, which the timeline's columns do not tell apart."""
    return cfg.trace.enabled and cfg.trace.timeline_every > 0 and not cfg.runtime.colocated


def clock_offsets(topology, timeout_s: float) -> np.ndarray | None:
    """On the lead serving rank: the offset (its clock - the lead's clock, seconds) of each other
    serving rank, then of each worker (``topology.servers[1:] + topology.workers``); on every
    other rank None. Collective over the topology's ranks."""
    backend = topology.backend
    ping, stamp = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    if not topology.is_lead:
        for _ in range(ROUNDS):
            wait_all([backend.irecv(ping, source=topology.server, tag=CLOCK_TAG)], timeout_s, "clock sync")
            stamp[0] = time.perf_counter()
            wait_all([backend.isend(stamp, dest=topology.server, tag=CLOCK_TAG)], timeout_s, "clock sync")
        return None
    others = [*topology.servers[1:], *topology.workers]
    offsets = np.zeros(len(others))
    for i, rank in enumerate(others):
        best = np.inf
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            answer = backend.irecv(stamp, source=rank, tag=CLOCK_TAG)
            wait_all(
                [backend.isend(ping, dest=rank, tag=CLOCK_TAG), answer], timeout_s, "clock sync", [rank, rank]
            )
            t1 = time.perf_counter()
            if t1 - t0 < best:
                best, offsets[i] = t1 - t0, float(stamp[0]) - (t0 + t1) / 2
    return offsets
