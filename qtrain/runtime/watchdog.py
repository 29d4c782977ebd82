"""A thread that aborts the whole job when the current phase runs longer than ``runtime.timeout_s``.

Communication waits have their own deadlines (``waiting.py``, which name the silent ranks); the
watchdog also catches a rank stuck outside MPI (a hung data loader, a deadlocked kernel)."""

from __future__ import annotations

import sys
import threading
import time


class Watchdog:
    def __init__(self, rank: int, timeout_s: float, on_timeout):
        self.rank, self.timeout_s, self.on_timeout = rank, timeout_s, on_timeout
        self.phase, self.since = "start-up", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qtrain-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # a little slack beyond the deadline lets the communication waits report first
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            elapsed = time.monotonic() - self.since
            if elapsed > self.timeout_s * 1.5:
                msg = f"qtrain: rank {self.rank} watchdog: phase '{self.phase}' has run {elapsed:.0f} s"
                print(msg, file=sys.stderr, flush=True)
                self.on_timeout(msg)
                return
