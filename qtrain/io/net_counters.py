"""Byte counters of a network interface, as the kernel counts them (headers included).

``qtrain bench network`` names each rank's emulated link in ``QTRAIN_WIRE_DEVICE``; the serving
rank then records, per step, the bytes its link received (the uplinks) and sent (the downlinks),
which is what the step cost on the wire, control records and TCP/IP overhead included.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "QTRAIN_WIRE_DEVICE"


class NetCounters:
    def __init__(self, device: str):
        self.device = device
        self._paths = [Path(f"/sys/class/net/{device}/statistics/{k}_bytes") for k in ("rx", "tx")]
        if not all(p.is_file() for p in self._paths):
            raise ValueError(f"{ENV}={device}: no such network interface in this namespace")
        self._last = self.read()

    @classmethod
    def from_env(cls) -> NetCounters | None:
        device = os.environ.get(ENV)
        return cls(device) if device else None

    def read(self) -> tuple[int, int]:
        rx, tx = (int(p.read_text()) for p in self._paths)
        return rx, tx

    def delta(self) -> tuple[int, int]:
        """(received, sent) bytes since the last call (or since construction)."""
        now = self.read()
        rx, tx = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        return rx, tx
