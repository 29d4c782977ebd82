"""SIGINT/SIGTERM/SIGUSR1 become a request to stop at the next step boundary.

The request travels in the control records (worker -> server in the uplink record, server ->
everyone in the downlink record), so all ranks stop after the same step, in agreement, and rank 0
writes the final summary.

One user action often reaches a rank twice: a terminal's Ctrl-C goes to every process of its
foreground group, the ranks too where they share the launcher's group (MPICH's
``mpiexec.gforker``), and the launcher forwards it again (MPICH's hydra forwards SIGINT, SIGTERM
and SIGUSR1; so does ``pkill -INT -f qtrain``, which reaches the launcher and every rank). Every
rank took the second copy for a second signal and died of it: a hard abort, no stop checkpoint, no
summary (issue #37). So a signal within ``REPEAT_GRACE_S`` of the rank's first is that same
request; one later is a user insisting, and falls back to the default behaviour (the rank ends at
once). A second Ctrl-C at a terminal also reaches the launcher itself, and hydra then aborts the
whole job ("Press Ctrl-C again to force abort"); after the first, hydra waits for the ranks as long
as they take. Open MPI's ``mpirun`` (5.0) ends the job on Ctrl-C itself: SIGTERM to every rank (a
stop request here), SIGKILL 0.25 s later, not configurable; a clean stop under it is SIGUSR1 to
``mpirun``, which forwards it.
"""

from __future__ import annotations

import signal
import time

REPEAT_GRACE_S = 5.0  # a copy of the same request: a launcher forwards within milliseconds; the
# slack covers a copy whose Python handler runs only after a long C call (a checkpoint write)


class StopRequest:
    def __init__(self, clock=time.monotonic):
        self.local: str | None = None  # this rank's own signal
        self.adopted: str | None = None  # another serving rank's, taken over by the lead
        self.clock = clock
        self.since: float | None = None  # when this rank's own first signal was handled

    @property
    def reason(self) -> str | None:
        return self.local or self.adopted

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def adopt(self, reason: str) -> None:
        """Take over another rank's request (the lead, for a signal on another serving rank); a
        signal here later is still this rank's first, not the second that ends it at once."""
        if not self.requested:
            self.adopted = reason

    def install(self, rank: int | None, grace_s: float = REPEAT_GRACE_S) -> None:
        """Make SIGINT, SIGTERM and SIGUSR1 stop requests of this rank (``rank`` None: of the one
        process, ``qtrain simulate``, where no launcher copies a signal: ``grace_s`` 0)."""
        where = "" if rank is None else f" on rank {rank}"

        def handler(signum, frame):
            now = self.clock()
            if self.local is None:
                self.local, self.since = f"{signal.Signals(signum).name}{where}", now
            elif now - self.since > grace_s:  # a second request: the default ends the rank
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)
