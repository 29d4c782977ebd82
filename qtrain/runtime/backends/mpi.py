"""The MPI backend (``engine/backend.py``) over mpi4py: the only module of qtrain that imports it.

Buffers go to mpi4py's buffer API (upper-case ``Isend``/``Irecv``/``Ibcast``/``Bcast``, no
pickles): a CPU tensor as its numpy view, a CUDA tensor as itself (``__cuda_array_interface__``,
for CUDA-aware libraries). Objects between steps go through the pickled lower-case collectives.

Whether the library takes CUDA device buffers (:meth:`MpiBackend.device_buffers`), in order of
precedence:
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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from qtrain.engine.backend import DeviceBuffers

if TYPE_CHECKING:
    from qtrain.engine.backend import Backend

ENV_OVERRIDE = "QTRAIN_CUDA_AWARE"


def _mpi() -> Any:  # the mpi4py.MPI module
    from mpi4py import MPI

    return MPI


def unavailable() -> str | None:
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


def mpi4py_version() -> str:
    import mpi4py

    return mpi4py.__version__


def _buffer(t: torch.Tensor) -> Any:
    """What mpi4py accepts for a contiguous tensor: a numpy view on CPU, the tensor itself
    (``__cuda_array_interface__``) on a CUDA device."""
    return t.numpy() if t.device.type == "cpu" else t


class _Request:
    """An MPI request as the backend's :class:`~qtrain.engine.backend.Request`. It holds the
    buffer too: mpi4py keeps only the memory address of a numpy view, and the tensor must live
    until the operation completes."""

    __slots__ = ("_request", "_buffer")

    def __init__(self, request: Any, buffer: Any):
        self._request, self._buffer = request, buffer

    def test(self) -> bool:
        return bool(self._request.Test())


class MpiBackend:
    """One rank's end of an MPI communicator (``COMM_WORLD`` by default)."""

    name = "mpi"

    def __init__(self, comm: Any = None):  # an mpi4py communicator
        self.comm = _mpi().COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()

    # ---------------------------------------------------------------- pickled objects
    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int) -> list[Any] | None:
        return self.comm.gather(obj, root=root)

    def bcast(self, obj: Any, root: int) -> Any:
        return self.comm.bcast(obj, root=root)

    def scatter(self, objs: Sequence[Any] | None, root: int) -> Any:
        return self.comm.scatter(objs, root=root)

    # ---------------------------------------------------------------- buffers
    def bcast_tensor(self, tensor: torch.Tensor, root: int) -> None:
        self.comm.Bcast(_buffer(tensor), root=root)

    def isend(self, tensor: torch.Tensor, dest: int, tag: int) -> _Request:
        buf = _buffer(tensor)
        return _Request(self.comm.Isend(buf, dest=dest, tag=tag), buf)

    def irecv(self, tensor: torch.Tensor, source: int, tag: int) -> _Request:
        buf = _buffer(tensor)
        return _Request(self.comm.Irecv(buf, source=source, tag=tag), buf)

    def ibcast(self, tensor: torch.Tensor, root: int) -> _Request:
        buf = _buffer(tensor)
        return _Request(self.comm.Ibcast(buf, root=root), buf)

    # ---------------------------------------------------------------- groups and places
    def split(self, ranks: Sequence[int]) -> MpiBackend | None:
        ranks = list(ranks)
        member = self.rank in ranks
        comm = self.comm.Split(0 if member else _mpi().UNDEFINED, ranks.index(self.rank) if member else 0)
        return MpiBackend(comm) if member else None

    def node_rank(self) -> int:
        node = self.comm.Split_type(_mpi().COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()

    # ---------------------------------------------------------------- the library
    def library(self) -> str:
        return library_version()

    def device_buffers(self, setting: str = "auto") -> DeviceBuffers:
        return device_buffers(setting)

    def threads_may_communicate(self) -> bool:
        MPI = _mpi()
        return MPI.Query_thread() == MPI.THREAD_MULTIPLE

    def abort(self) -> NoReturn:
        self.comm.Abort(1)
        raise SystemExit(1)  # MPI_Abort returned (another rank's abort is tearing the job down)

    def finalize(self) -> None:
        _mpi().Finalize()


def library_version() -> str:
    """First line of ``MPI_Get_library_version``, e.g. ``MPICH Version: 5.0.2``."""
    text = _mpi().Get_library_version().replace("\x00", "")  # Open MPI's string carries a NUL
    return " ".join(text.splitlines()[0].split())


def device_buffers(setting: str = "auto") -> DeviceBuffers:
    """The CUDA-aware decision (steps 1-4 of the module's docstring)."""
    if setting in ("on", "off"):
        return DeviceBuffers("yes" if setting == "on" else "no", f"config runtime.cuda_aware={setting}")
    if setting != "auto":
        raise ValueError(f"runtime.cuda_aware must be auto, on or off, got {setting!r}")
    env = os.environ.get(ENV_OVERRIDE)
    if env is not None:
        if env not in ("0", "1"):
            raise ValueError(f"{ENV_OVERRIDE} must be 0 or 1, got {env!r}")
        library = query_library()
        return DeviceBuffers(
            "yes" if env == "1" else "no", f"environment {ENV_OVERRIDE}={env} (library said {library.answer})"
        )
    return query_library()


def _loaded_mpi_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libmpi" in line and ".so" in line}
    except OSError:
        return []
    return sorted(paths)


def query_library() -> DeviceBuffers:
    """Ask the MPI library itself (step 3 of the module's docstring)."""
    MPI = _mpi()
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        return DeviceBuffers("yes" if query() else "no", "MPI.Query_cuda_support() through mpi4py")
    for path in _loaded_mpi_libraries():
        try:
            fn = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        except OSError:
            continue
        if fn is not None:
            fn.restype = ctypes.c_int
            return DeviceBuffers("yes" if fn() else "no", f"MPIX_Query_cuda_support() via ctypes in {path}")
    return DeviceBuffers("unknown", "the MPI library offers no MPIX_Query_cuda_support()")


if TYPE_CHECKING:  # the type checker (make lint) verifies that MpiBackend is a Backend, structurally

    def _is_backend(backend: MpiBackend) -> Backend:
        return backend
