"""The bound every reader checks before it allocates: the memory this process may still take.

A reader that is about to allocate what a file *declares* (an HDF5 dataset's shape, an npz
member's size, an idx header's dimensions, a decompressed stream) first asks ``require_fits``:
more than this machine can give is a one-line ``MemoryBoundError`` that names the item and both
numbers, before anything is allocated, instead of a MemoryError traceback or a node driven into
swap. The bound is the kernel's ``MemAvailable`` and, inside a container or a Slurm job, what is
left below the cgroup's memory limit, whichever is smaller, shared by the job's ranks on the node.
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1 << 30


class MemoryBoundError(ValueError):
    """What a file declares does not fit in the memory this process may take."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_left() -> int | None:
    """Bytes left below this process's cgroup memory limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``); None without a limit."""
    try:
        entries = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].lstrip("/")
        if parts[1] == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / rel
            limit, used = base / "memory.max", base / "memory.current"
        elif "memory" in parts[1].split(","):
            base = Path("/sys/fs/cgroup/memory") / rel
            limit, used = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            text = limit.read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            return max(0, int(text) - int(used.read_text().strip()))
        except (OSError, ValueError):
            return None
    return None


def local_ranks() -> int:
    """How many ranks of this job share this node, from the launcher's environment (MPICH's
    hydra, Open MPI, Slurm); 1 outside a launcher."""
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def available_bytes() -> int | None:
    """The memory this process may still allocate (None when the system does not say)."""
    known = [b for b in (_meminfo_available(), _cgroup_left()) if b is not None]
    return min(known) if known else None


def describe(nbytes: int) -> str:
    if nbytes >= GIB:
        return f"{nbytes / GIB:.1f} GiB"
    return f"{nbytes / (1 << 20):.1f} MiB"


def require_fits(nbytes: int, what: str) -> None:
    """Raise ``MemoryBoundError`` when ``what`` needs more than this rank's share of the memory
    available: ``available_bytes()`` over the ranks of the job on this node (every rank of an MPI
    run loads its data at the same time)."""
    free = available_bytes()
    if free is None:
        return
    ranks = local_ranks()
    share = free // ranks
    if nbytes > share:
        per = f" ({describe(free)} over the {ranks} ranks on this node)" if ranks > 1 else ""
        raise MemoryBoundError(
            f"{what} needs {describe(nbytes)} of memory ({nbytes} bytes), and this rank has "
            f"{describe(share)} available{per}"
        )
