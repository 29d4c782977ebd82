"""Deliberate failures for testing the failure paths: ``QTRAIN_INJECT_FAULT=RANK:STEP:KIND``.

KIND is ``raise`` (an exception in the step), ``hang`` (the rank stops answering) or ``exit``
(the process vanishes with status 3). Unset in normal runs; the test suite uses it to prove that a
failing rank ends the whole job quickly with a message naming it.
"""

from __future__ import annotations

import os
import time

ENV = "QTRAIN_INJECT_FAULT"


class InjectedFault(RuntimeError):
    pass


def parse() -> tuple[int, int, str] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    try:
        rank, step, kind = spec.split(":")
        assert kind in ("raise", "hang", "exit")
        return int(rank), int(step), kind
    except (ValueError, AssertionError):
        raise ValueError(f"{ENV} must be RANK:STEP:raise|hang|exit, got {spec!r}") from None


def maybe_fail(fault: tuple[int, int, str] | None, rank: int, step: int) -> None:
    if fault is None or fault[0] != rank or fault[1] != step:
        return
    kind = fault[2]
    if kind == "raise":
        raise InjectedFault(f"injected fault on rank {rank} at step {step}")
    if kind == "exit":
        os._exit(3)
    while True:
        time.sleep(3600)
