"""SIGINT/SIGTERM/SIGUSR1 become a request to stop at the next step boundary.

The request travels in the control records (worker -> server in the uplink record, server ->
everyone in the downlink record), so all ranks stop after the same step, in agreement, and rank 0
writes the final summary. A second signal of the same kind falls back to the default behaviour.
"""

from __future__ import annotations

import signal


class StopRequest:
    def __init__(self):
        self.local: str | None = None  # this rank's own signal
        self.adopted: str | None = None  # another serving rank's, taken over by the lead

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

    def install(self, rank: int) -> None:
        def handler(signum, frame):
            if self.local is not None:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
                return
            self.local = f"{signal.Signals(signum).name} on rank {rank}"

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)
