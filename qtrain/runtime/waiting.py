"""Waiting on the backend's requests (``engine/backend.py``) with a deadline, so a rank that stops
answering is named, not waited for forever.

The wait calls ``test`` (which also drives the library's progress engine) in a loop that yields the
CPU between tests (``sched_yield``) for the first ``SPIN_S`` seconds, then sleeps with a back-off
up to 1 ms. Yielding keeps latency low on dedicated cores; the sleeps leave the CPU alone during
long waits (MPICH's blocking waits spin). When the node's ranks have fewer cores than threads
(``set_spin(False)``, decided at start-up), a yielding rank stays runnable and takes turns from
the ranks that compute, so the loop sleeps from the start (Open MPI's ``mpi_yield_when_idle``
makes the same choice): 8% shorter steps for 1 server + 4 workers on 2 cores (docs/benchmarks.md).
``benchmarks/transport.py`` measures the cost against plain blocking collectives."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qtrain.engine.backend import Request

SPIN_S = 0.002


def set_spin(spin: bool) -> None:
    """Yield for the first 2 ms of a wait (dedicated cores), or sleep from the start."""
    global SPIN_S
    SPIN_S = 0.002 if spin else 0.0


class Stalled(RuntimeError):
    """A communication phase did not complete within ``runtime.timeout_s``."""


def wait_all(
    requests: Sequence[Request | None],
    timeout_s: float,
    phase: str,
    peers: Sequence[int] | None = None,
    where: str = "",
) -> None:
    """Wait for every request; after ``timeout_s`` without progress raise :class:`Stalled` naming
    the phase, where in the run it is (e.g. " (step 5, segment 0)") and the peers (ranks, parallel
    to ``requests``) that have not completed."""
    pending: list[Request | None] = list(requests)

    def who() -> str:
        silent = [str(peers[i]) for i, r in enumerate(pending) if r is not None] if peers else []
        return where + (f" from rank(s) {', '.join(silent)}" if silent else "")

    while any(r is not None for r in pending):
        for i in wait_some(pending, timeout_s, phase, who):
            pending[i] = None


def wait_some(
    requests: Sequence[Request | None], timeout_s: float, phase: str, who: Callable[[], str]
) -> list[int]:
    """Wait until at least one of ``requests`` (None entries are done already) completes; return
    the indices that completed. After ``timeout_s`` without any, raise :class:`Stalled`; ``who()``
    then says where and from whom (e.g. " (step 5, segment 2) from rank(s) 3")."""
    start = time.monotonic()
    pause = 0.0
    while True:
        done = [i for i, r in enumerate(requests) if r is not None and r.test()]
        if done or all(r is None for r in requests):
            return done
        if time.monotonic() - start > timeout_s:
            raise Stalled(f"no progress for {timeout_s:g} s in phase '{phase}'{who()}")
        if time.monotonic() - start < SPIN_S:
            os.sched_yield()
            continue
        time.sleep(pause)
        pause = min(2 * pause or 1e-5, 1e-3)
