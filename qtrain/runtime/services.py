"""What a rank has beside the run itself: its watchdog, stop request, log, output function and
injected fault; and the job-wide abort."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

ABORT_GRACE_S = 0.5


def abort(comm) -> NoReturn:
    """MPI_Abort, after a pause that lets the launcher forward the message we just printed (MPICH's
    hydra tears the job down on the first abort and drops output still in its pipes). Never
    returns: when another rank's abort is already tearing the job down, MPI_Abort can return (or
    raise), and the rank then went on into the CLI, which printed an ``AttributeError`` traceback
    after its one-line error (3 of 45 failing MPI runs, issue #22); the process ends here instead."""
    time.sleep(ABORT_GRACE_S)
    try:
        comm.Abort(1)
    finally:
        for stream in (sys.stdout, sys.stderr):  # a closed pipe or a full disk must not skip the exit
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(1)


@dataclass
class RankServices:
    rank: int
    echo: object
    watchdog: object
    stop: object
    fault: tuple | None = None
    log: object = None

    @classmethod
    def start(cls, rank: int, echo) -> RankServices:
        """Signals become stop requests, and a watchdog (default deadline until the config is
        read) aborts the job when a phase hangs."""
        from mpi4py import MPI

        from qtrain.config import RuntimeConfig
        from qtrain.runtime.signals import StopRequest
        from qtrain.runtime.watchdog import Watchdog

        stop = StopRequest()
        stop.install(rank)
        svc = cls(rank, echo, None, stop)

        def on_timeout(message: str) -> None:
            if svc.log is not None:
                svc.log.error(message)
            abort(MPI.COMM_WORLD)

        svc.watchdog = Watchdog(rank, RuntimeConfig().timeout_s, on_timeout).start()
        return svc

    def open_log(self, out_dir, world) -> None:
        from qtrain.runtime.rank_log import open_rank_log

        self.log = open_rank_log(out_dir, self.rank)
        self.log.info(
            "qtrain %s, world %d, %s, device %s, cuda-aware %s (%s)",
            world.version,
            len(world.hosts),
            world.hosts[self.rank],
            world.devices[self.rank],
            world.cuda.answer,
            world.cuda.how,
        )
        self.watchdog.enter("set-up")
