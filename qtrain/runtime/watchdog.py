"""A thread that aborts the whole job when the current phase runs longer than ``runtime.timeout_s``.

Communication waits have their own deadlines (``waiting.py``, which name the silent ranks); the
watchdog also catches a rank stuck outside MPI (a hung data loader, a deadlocked kernel). A rank
that is in its own script's code, not in qtrain's (``own_code``), is named by the line it is at,
not by qtrain's last phase: a worker blocked in ``input()`` was reported as phase 'set-up'."""

from __future__ import annotations

import sys
import threading
import time


class Watchdog:
    def __init__(self, rank: int, timeout_s: float, on_timeout, who: str | None = None, where=None):
        """``who`` names the process in the message (default ``rank R``; the simulator's is
        ``simulate``). ``where()``: where this process is in its own code, or None while qtrain
        is at work (``runtime/own_code.py``, for the ranks that run a user's script)."""
        self.rank, self.timeout_s, self.on_timeout = rank, timeout_s, on_timeout
        self.who = who or f"rank {rank}"
        self.where = where
        self.phase, self.since = "start-up", time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qtrain-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()

    def set_timeout(self, timeout_s: float, phase: str) -> None:
        """The config's deadline, from a new phase that starts now: the time spent before the
        config was read (imports, MPI start-up) ran under the default deadline and does not count
        against the config's (a 3 s ``runtime.timeout_s`` once aborted a start-up that had taken
        5 s on a loaded host). The phase is set first, so the thread never pairs the new deadline
        with the old phase's start."""
        self.enter(phase)
        self.timeout_s = timeout_s

    def overdue(self) -> str | None:
        """The message when the current phase has run past the deadline (with slack), else None.
        The deadline is read before the phase's start (``set_timeout`` writes them the other way
        round), so a deadline that has just changed is never paired with the previous start."""
        timeout_s = self.timeout_s
        elapsed = time.monotonic() - self.since
        if elapsed <= timeout_s * 1.5:
            return None
        place = self.where() if self.where is not None else None
        if place is not None:
            return (
                f"qtrain: {self.who} watchdog: the script has run {elapsed:.0f} s without calling qtrain, "
                f"and is at {place}"
            )
        return f"qtrain: {self.who} watchdog: phase '{self.phase}' has run {elapsed:.0f} s"

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # a little slack beyond the deadline lets the communication waits report first
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            msg = self.overdue()
            if msg is not None:
                print(msg, file=sys.stderr, flush=True)
                self.on_timeout(msg)
                return
