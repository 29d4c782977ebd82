"""How MPI launchers tell a process where it is, read before any backend starts: the rank the
launcher gave it, and the ``mpiexec`` command qtrain's own launches use. (The MPI library itself
is ``runtime/backends/mpi.py``'s.)"""

from __future__ import annotations

import os
import shlex
import sys

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launch_rank() -> str | None:
    """This process's rank as its launcher set it (torchrun's ``RANK`` when ``TORCHELASTIC_RUN_ID``
    says torchrun started it, also under ``srun torchrun``; else MPICH/Intel MPI, Open MPI, PMIx,
    srun), read before any backend starts; None when no launcher started it."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ.get("RANK")
    for var in RANK_VARIABLES:
        if var in os.environ:
            return os.environ[var]
    return None


def launcher() -> list[str]:
    """The ``mpiexec`` command qtrain's own launches use: ``QTRAIN_MPIEXEC`` (the Makefile's choice,
    e.g. Open MPI's ``mpirun --oversubscribe``), else the ``mpiexec`` beside this Python."""
    return shlex.split(os.environ.get("QTRAIN_MPIEXEC", "")) or [
        os.path.join(os.path.dirname(sys.executable), "mpiexec")
    ]
