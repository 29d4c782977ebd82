"""What a failed write is reported as: the OS error with the file's name, and "no space left on
device" when the file system is full even where HDF5 reported something else (it turns ENOSPC
into errors such as ``RuntimeError: Slist already enabled?``)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FULL_BELOW = 1 << 20  # bytes free: below this the file system counts as full


def write_error(exc: BaseException, path: Path, what: str) -> OSError:
    """An ``OSError`` for the failed write of ``path`` (``what``: e.g. "writing the trace")."""
    if isinstance(exc, OSError) and exc.errno:
        return OSError(exc.errno, f"{what}: {exc.strerror}", str(path))
    try:
        full = shutil.disk_usage(Path(path).parent).free < FULL_BELOW
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, f"{what}: {os.strerror(errno.ENOSPC)}", str(path))
    return OSError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}", str(path))


def describe(exc: BaseException) -> str:
    """One line for a rank's failure: an OSError as 'what: reason (ENAME): file'."""
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror} ({name}){where}"
    return f"{type(exc).__name__}: {exc}"
