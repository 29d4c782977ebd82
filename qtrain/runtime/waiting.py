"""Waiting on MPI requests with a deadline, so a rank that stops answering is named, not waited
for forever. Polling with a short sleep also leaves the CPU to other ranks on oversubscribed
nodes (MPICH's blocking waits spin)."""

from __future__ import annotations

import time


class Stalled(RuntimeError):
    """A communication phase did not complete within ``runtime.timeout_s``."""


def wait_all(requests, timeout_s: float, phase: str, peers: list[int] | None = None) -> None:
    """Wait for every request; after ``timeout_s`` raise :class:`Stalled` naming the phase and the
    peers (ranks, parallel to ``requests``) that have not completed."""
    pending = list(range(len(requests)))
    deadline = time.monotonic() + timeout_s
    pause = 0.0
    while pending:
        still = []
        for i in pending:
            if not requests[i].Test():
                still.append(i)
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            who = f" from rank(s) {', '.join(str(peers[i]) for i in pending)}" if peers else ""
            raise Stalled(f"no progress for {timeout_s:g} s in phase '{phase}'{who}")
        if pause:
            time.sleep(pause)
        pause = min(2 * pause or 1e-5, 1e-3)
