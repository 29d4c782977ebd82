"""HDF5 files that could not be closed, and how a process that holds one ends.

When the disk fills under an open HDF5 file, ``H5Fclose`` can fail to flush the file's metadata and
leave the file open inside the library (h5py 3 over HDF5 1.14, a full tmpfs: "Can't decrement id
ref count ... No space left on device"). From then on freeing any of the file's handles prints
HDF5's complaints, and the library's own teardown at interpreter exit crashes the process
(SIGSEGV, exit status 139, after the one-line error had been printed). So the handles of such a
file are kept here, never freed, and a process that kept any ends with ``os._exit`` once it has
said what went wrong: the library is not torn down, and the exit status is the error's.
"""

from __future__ import annotations

import os
import sys

_KEPT: list[tuple] = []


def keep(*handles) -> None:
    """Hold the handles of a file HDF5 could not close, so that they are never freed."""
    _KEPT.append(handles)


def exit_process(code: int) -> None:
    """``sys.exit(code)``, or, when an HDF5 file was abandoned, flush stdio and ``os._exit(code)``."""
    if not _KEPT:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
