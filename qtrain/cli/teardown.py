"""A quicker interpreter exit: the cyclic collector's last passes skip what is still alive.

At exit Python clears every module and runs the cyclic garbage collector over what is left: with
torch, numba and scipy loaded that is hundreds of thousands of objects, about 0.6 s of CPU in every
process (every rank of every run, and every ``qtrain simulate`` or ``analyze``). Before the
interpreter exits, :func:`before_exit` collects the garbage that exists (finalizers run as
usual) and then freezes the survivors (``gc.freeze``): module teardown still frees them by
reference counting, flushes and closes what they hold, and runs ``atexit`` (MPI_Finalize
included); only reference cycles among them are left to the operating system.

A user's script (``qtrain run``, on the workers) may hold files whose only flush is such a
cycle's finalizer, so a process that ran one exits the ordinary way (:func:`user_code_ran`).
qtrain's own files are closed explicitly before any of this.
"""

from __future__ import annotations

import gc

_user_code = False


def user_code_ran() -> None:
    """This process ran a user's script: keep Python's full collection at exit."""
    global _user_code
    _user_code = True


def before_exit() -> None:
    """Collect the garbage there is, then freeze the survivors (see the module docstring)."""
    if _user_code:
        return
    gc.collect()
    gc.freeze()
