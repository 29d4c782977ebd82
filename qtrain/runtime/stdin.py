"""Standard input goes to rank 0 only: every other rank reads ``/dev/null`` (a read sees end of
file at once).

What a rank's fd 0 is depends on the launcher: Open MPI's ``mpirun`` gives rank 0 its own stdin
and the others ``/dev/null``; MPICH's hydra gives the others a pipe it never writes to nor closes,
so a worker's ``input()`` under ``qtrain run`` blocked until the watchdog ended the job (300 s by
default, named as phase 'set-up'; issue #37); MPICH's ``mpiexec.gforker`` hands every rank the
same pipe, so ranks steal each other's lines. ``qtrain run`` (and every qtrain session) makes all
of them behave as Open MPI does: rank 0 keeps what the launcher gave it, the others read nothing.
"""

from __future__ import annotations

import os

_emptied = False


def give_stdin_to_rank_0(rank: int) -> None:
    """On ranks other than 0, make fd 0 (and so ``sys.stdin`` and ``input()``) ``/dev/null``."""
    global _emptied
    if rank == 0 or _emptied:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    _emptied = True


def emptied() -> bool:
    """Whether this rank's stdin is qtrain's ``/dev/null``."""
    return _emptied
