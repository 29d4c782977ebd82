"""SIGINT/SIGTERM/SIGUSR1 become a request to stop at the next step boundary.

The request travels in the control records (worker -> server in the uplink record, server ->
everyone in the downlink record), so all ranks stop after the same step, in agreement, and rank 0
writes the final summary. A second signal of the same kind falls back to the default behaviour.
"""

from __future__ import annotations

import signal


class StopRequest:
    def __init__(self):
        self.reason: str | None = None

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def install(self, rank: int) -> None:
        def handler(signum, frame):
            if self.reason is not None:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
                return
            self.reason = f"{signal.Signals(signum).name} on rank {rank}"

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)
