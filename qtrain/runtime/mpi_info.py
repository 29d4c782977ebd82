"""What MPI library this process runs on, and whether it can take CUDA device buffers.

The CUDA-aware decision, in order of precedence:
1. the config setting ``runtime.cuda_aware`` when it is ``on`` or ``off``;
2. the environment override ``QTRAIN_CUDA_AWARE=0|1``;
3. the library's own answer: ``MPI.Query_cuda_support()`` where mpi4py offers it, otherwise
   ``MPIX_Query_cuda_support()`` looked up with ctypes in the loaded MPI library (MPICH >= 4 and
   Open MPI >= 2 export it);
4. ``unknown`` (treated as not CUDA-aware: buffers are staged through host memory).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import sys
from dataclasses import dataclass

ENV_OVERRIDE = "QTRAIN_CUDA_AWARE"


RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def launch_rank() -> str | None:
    """This process's rank as its launcher set it (MPICH/Intel MPI, Open MPI, PMIx, srun), read
    before MPI starts; None when no launcher started it."""
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


@dataclass(frozen=True)
class CudaAwareness:
    answer: str  # "yes" | "no" | "unknown"
    how: str

    @property
    def enabled(self) -> bool:
        return self.answer == "yes"


def _mpi():
    from mpi4py import MPI

    return MPI


def missing_mpi() -> str | None:
    """None when mpi4py loads an MPI library; else one line saying why not and how to get one
    (``qtrain info`` prints it, ``qtrain train`` and ``qtrain run`` exit 2 with it)."""
    try:
        _mpi()
    except (ImportError, RuntimeError) as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        return (
            f"no MPI library could be loaded ({why}): `pip install mpich` (or qtrain[mpich]) for one "
            "from PyPI, or load your site's MPI module and `pip install --no-binary=mpi4py mpi4py` "
            "against it (README, 'On a cluster')"
        )
    return None


def library_version() -> str:
    """First line of ``MPI_Get_library_version``, e.g. ``MPICH Version: 5.0.2``."""
    text = _mpi().Get_library_version().replace("\x00", "")  # Open MPI's string carries a NUL
    return " ".join(text.splitlines()[0].split())


def _loaded_mpi_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libmpi" in line and ".so" in line}
    except OSError:
        return []
    return sorted(paths)


def query_library() -> CudaAwareness:
    """Ask the MPI library itself (step 3 above)."""
    MPI = _mpi()
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        return CudaAwareness("yes" if query() else "no", "MPI.Query_cuda_support() through mpi4py")
    for path in _loaded_mpi_libraries():
        try:
            fn = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype = ctypes.c_int
            return CudaAwareness("yes" if fn() else "no", f"MPIX_Query_cuda_support() via ctypes in {path}")
    return CudaAwareness("unknown", "the MPI library offers no MPIX_Query_cuda_support()")


def decide_cuda_aware(setting: str = "auto") -> CudaAwareness:
    """The full decision (steps 1-4 above). ``setting`` is ``auto``, ``on`` or ``off``."""
    if setting in ("on", "off"):
        return CudaAwareness("yes" if setting == "on" else "no", f"config runtime.cuda_aware={setting}")
    if setting != "auto":
        raise ValueError(f"runtime.cuda_aware must be auto, on or off, got {setting!r}")
    env = os.environ.get(ENV_OVERRIDE)
    if env is not None:
        if env not in ("0", "1"):
            raise ValueError(f"{ENV_OVERRIDE} must be 0 or 1, got {env!r}")
        library = query_library()
        return CudaAwareness(
            "yes" if env == "1" else "no", f"environment {ENV_OVERRIDE}={env} (library said {library.answer})"
        )
    return query_library()
