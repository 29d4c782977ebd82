"""What a rank has beside the run itself: its watchdog, stop request, log, output function and
injected fault; and the job-wide abort."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ABORT_GRACE_S = 0.5
_local_peers: list[tuple[int, str]] = []  # (pid, start time) of this job's other ranks on this node


def process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/PID/stat), which tells a
    rank from a later process that reused its pid; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def set_local_peers(peers: list[tuple[int, str]]) -> None:
    """The other ranks on this node, as start-up found them (pid and ``process_start``)."""
    _local_peers[:] = [(pid, start) for pid, start in peers if pid != os.getpid()]


def _kill_local_peers() -> None:
    """SIGKILL this job's other ranks on this node. A stopped rank (SIGSTOP, a debugger) never
    acts on the launcher's SIGTERM, so it outlived mpiexec after an abort (issue #22); SIGKILL
    ends it, stopped or not. Ranks on other nodes are their launcher daemon's to end."""
    for pid, start in _local_peers:
        if process_start(pid) == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def abort(backend=None) -> NoReturn:
    """The backend's abort (MPI_Abort; torch: the process ends and its launcher ends the rest),
    after a pause that lets the launcher forward the message we just printed (MPICH's
    hydra tears the job down on the first abort and drops output still in its pipes). Never
    returns: when another rank's abort is already tearing the job down, MPI_Abort can return (or
    raise), and the rank then went on into the CLI, which printed an ``AttributeError`` traceback
    after its one-line error (3 of 45 failing MPI runs, issue #22); the process ends here instead.
    ``backend``: the job's (default: the one this process started, if any)."""
    from qtrain.runtime import backends

    backend = backend if backend is not None else backends.started()
    time.sleep(ABORT_GRACE_S)
    _kill_local_peers()
    try:
        if backend is not None:
            backend.abort()
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
        read) aborts the job when a phase hangs, naming the script's line when the rank is in
        the user's own code rather than in qtrain's."""
        from qtrain.config import RuntimeConfig
        from qtrain.runtime.own_code import own_code
        from qtrain.runtime.signals import StopRequest
        from qtrain.runtime.watchdog import Watchdog

        stop = StopRequest()
        stop.install(rank)
        svc = cls(rank, echo, None, stop)

        def on_timeout(message: str) -> None:
            if svc.log is not None:
                svc.log.error(message)
            abort()

        svc.watchdog = Watchdog(rank, RuntimeConfig().timeout_s, on_timeout, where=own_code).start()
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
