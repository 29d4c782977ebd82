"""The torch backend (``engine/backend.py``) over ``torch.distributed`` with gloo: CPU tensors.

Start-up (:meth:`TorchBackend.from_env`) reads the launcher's environment and joins the job with
``init_process_group("gloo", init_method="env://")``:

- ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- under ``srun`` (no ``RANK``) the rank is ``SLURM_PROCID``, the size ``SLURM_NTASKS`` and the
  node-local rank ``SLURM_LOCALID``; ``MASTER_ADDR`` and ``MASTER_PORT`` (rank 0's host and a free
  port) must be exported by the job script.

:func:`unavailable` says in one line what is missing. The process group's timeout is
:func:`timeout` (``QTRAIN_GLOO_TIMEOUT_S``, default 1800 s). It bounds every gloo operation, the
posted sends, receives and broadcasts of a step included, and the rendezvous with rank 0: a
phase that waits longer ends with gloo's own error instead of qtrain's named deadline. So start-up
refuses a ``runtime.timeout_s`` that is not below it (``runtime/startup.py``), and qtrain's
deadlines always name the silent rank first.

Objects between steps go through torch's pickling collectives (``all_gather_object``,
``gather_object``, ``broadcast_object_list``, ``scatter_object_list``); buffers through
``broadcast``, ``isend``/``irecv`` (with ``tag``) and ``broadcast(async_op=True)``.

Groups (:meth:`TorchBackend.split`): ``dist.new_group`` must be entered by every rank of the job
and may number its members in sorted order, while the protocol numbers them in the order given
(qtrain rotates it on purpose). A :class:`TorchBackend` therefore keeps its members' global ranks
in the protocol's order and translates every root, source and destination itself; results of the
object collectives are put back in that order. Only the job's group may be split.

Requests: gloo's collectives run on its worker threads and their ``Work`` reports completion
(``is_completed``), but a gloo ``isend``/``irecv`` ``Work`` only completes inside ``wait()`` (gloo
has no test for an unbound buffer; its data moves on gloo's own I/O thread meanwhile). So each
posted send or receive is waited by a daemon thread of a small pool (idle threads are reused, a
new one starts when none is idle, so one silent peer never holds up the others' requests), and
:meth:`_PointToPoint.test` reads the flag it sets. An error inside the operation (a peer that went
away, gloo's timeout) is raised by ``test()``.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.distributed as dist

from qtrain.engine.backend import DeviceBuffers

if TYPE_CHECKING:
    from qtrain.engine.backend import Backend

TIMEOUT_ENV = "QTRAIN_GLOO_TIMEOUT_S"


def timeout() -> timedelta:
    """gloo's timeout (``QTRAIN_GLOO_TIMEOUT_S``, default 1800 s); a ValueError names a bad value."""
    text = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: it must be a number of seconds above 0")
    return timedelta(seconds=seconds)


LAUNCH = (
    "launch with `torchrun --nproc-per-node N -m qtrain ...` (or `python -m torch.distributed.run`), "
    "or with srun and MASTER_ADDR/MASTER_PORT exported by the job script"
)


def _launch_env() -> tuple[dict[str, int], str | None]:
    """The launcher's rank, size and node-local rank (``local`` only where set), or why not."""
    env = os.environ
    if env.get("RANK"):
        names = {"rank": "RANK", "size": "WORLD_SIZE", "local": "LOCAL_RANK"}
    elif env.get("SLURM_PROCID"):
        names = {"rank": "SLURM_PROCID", "size": "SLURM_NTASKS", "local": "SLURM_LOCALID"}
    else:
        return {}, f"no rank in the environment (neither RANK nor SLURM_PROCID): {LAUNCH}"
    missing = [names["size"]] if not env.get(names["size"]) else []
    missing += [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        return {}, f"{names['rank']} is set but {', '.join(missing)} is not: {LAUNCH}"
    values: dict[str, int] = {}
    for key, name in names.items():
        text = env.get(name)
        if text is None or (key == "local" and not text):
            continue
        try:
            values[key] = int(text)
        except ValueError:
            return {}, f"{name}={text!r} is not an integer: {LAUNCH}"
    try:
        int(env["MASTER_PORT"])
    except ValueError:
        return {}, f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number: {LAUNCH}"
    if not 0 <= values["rank"] < values["size"]:
        return {}, f"{names['rank']}={values['rank']} is outside {names['size']}={values['size']}: {LAUNCH}"
    return values, None


def missing_library() -> str | None:
    """None when this torch has ``torch.distributed`` with gloo; else one line saying what it lacks
    (``qtrain info`` prints it)."""
    if not dist.is_available():
        return f"this torch ({torch.__version__}) was built without torch.distributed: use the MPI backend"
    if not dist.is_gloo_available():
        return f"this torch ({torch.__version__}) was built without gloo: use the MPI backend"
    return None


def unavailable() -> str | None:
    """None when ``torch.distributed`` with gloo can start here from the launcher's environment;
    else one line saying what is missing and how to launch (``qtrain train`` and ``qtrain run``
    exit 2 with it)."""
    missing = missing_library()
    if missing is not None:
        return missing
    try:
        timeout()
    except ValueError as exc:
        return str(exc)
    if dist.is_initialized():
        return None
    return _launch_env()[1]


def _check_cpu(tensor: torch.Tensor) -> None:
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError(
            f"the torch backend (gloo) takes contiguous CPU tensors, got a {tensor.device.type} tensor"
            f"{'' if tensor.is_contiguous() else ' that is not contiguous'}"
        )


class _Collective:
    """A gloo collective posted with ``async_op=True``: its ``Work`` reports completion itself.
    Once it has, ``wait()`` is called once so that an error inside the operation is raised. It
    holds the tensor until then."""

    __slots__ = ("_work", "_tensor", "_done")

    def __init__(self, work: Any, tensor: torch.Tensor):
        self._work = work
        self._tensor: torch.Tensor | None = tensor
        self._done = False

    def test(self) -> bool:
        if not self._done and self._work.is_completed():
            self._work.wait()  # raises the operation's error, if any
            self._done, self._tensor = True, None
        return self._done


class _PointToPoint:
    """A gloo ``isend``/``irecv``, completed by a waiter thread (see the module's docstring). It
    holds the tensor until the operation completes."""

    __slots__ = ("_work", "_tensor", "_done", "_error")

    def __init__(self, work: Any, tensor: torch.Tensor):
        self._work = work
        self._tensor: torch.Tensor | None = tensor
        self._done = threading.Event()
        self._error: BaseException | None = None
        _WAITERS.submit(self)

    def _wait(self) -> None:  # on a waiter thread; Work.wait releases the GIL
        try:
            self._work.wait()
        except BaseException as exc:  # handed to the thread that tests
            self._error = exc
        finally:
            self._work = None
            self._done.set()

    def test(self) -> bool:
        if not self._done.is_set():
            return False
        self._tensor = None
        if self._error is not None:
            raise self._error
        return True


class _Waiters:
    """Daemon threads that wait gloo's point-to-point ``Work`` objects, reused while idle (daemons:
    a request that never completes must not hold up the interpreter's exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_PointToPoint] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)

    def submit(self, request: _PointToPoint) -> None:
        if not self._idle.acquire(blocking=False):
            threading.Thread(target=self._run, name="qtrain-gloo-wait", daemon=True).start()
        self._jobs.put(request)

    def _run(self) -> None:
        while True:
            self._jobs.get()._wait()
            self._idle.release()


_WAITERS = _Waiters()
# a forked child has none of the threads (re-initialised in place: _Waiters has no subclass)
os.register_at_fork(after_in_child=_WAITERS.__init__)  # type: ignore[misc]


class TorchBackend:
    """One rank's end of a ``torch.distributed`` gloo group: the job's (``group`` None) or one made
    by :meth:`split`. ``ranks`` are the members' global ranks in the protocol's order."""

    name = "torch"

    def __init__(self, group: Any = None, ranks: Sequence[int] | None = None):
        self._group = group
        self._ranks: list[int] = list(range(dist.get_world_size())) if ranks is None else list(ranks)
        self.rank: int = self._ranks.index(dist.get_rank())
        self.size: int = len(self._ranks)
        # torch's number in the group of our member i (torch may sort a group's ranks)
        self._torch: list[int] = (
            self._ranks if group is None else [dist.get_group_rank(group, g) for g in self._ranks]
        )

    @classmethod
    def from_env(cls) -> TorchBackend:
        """Join the job (the module's docstring); a gloo process group started already is reused."""
        if dist.is_initialized() and "gloo" not in str(dist.get_backend()):
            raise RuntimeError(
                f"a torch.distributed process group with backend {dist.get_backend()} exists already (the "
                "script's own init_process_group?): qtrain's torch backend carries CPU tensors over gloo; "
                "call qtrain.init() before it, or do not start one"
            )
        if not dist.is_initialized():
            why = unavailable()
            if why is not None:
                raise RuntimeError(why)
            values, _ = _launch_env()
            dist.init_process_group(
                "gloo",
                init_method="env://",
                rank=values["rank"],
                world_size=values["size"],
                timeout=timeout(),
            )
        return cls()

    def _global(self, rank: int) -> int:
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is outside this group of {self.size}")
        return self._ranks[rank]

    def _ours(self, in_torch_order: list[Any]) -> list[Any]:
        return [in_torch_order[t] for t in self._torch]

    # ---------------------------------------------------------------- pickled objects
    def allgather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self._group)
        return self._ours(out)

    def gather(self, obj: Any, root: int) -> list[Any] | None:
        here = self.rank == root
        out: list[Any] | None = [None] * self.size if here else None
        dist.gather_object(obj, out, dst=self._global(root), group=self._group)
        return self._ours(out) if out is not None else None

    def bcast(self, obj: Any, root: int) -> Any:
        box = [obj if self.rank == root else None]
        dist.broadcast_object_list(box, src=self._global(root), group=self._group)
        return box[0]

    def scatter(self, objs: Sequence[Any] | None, root: int) -> Any:
        src = self._global(root)
        ordered: list[Any] | None = None
        if self.rank == root:
            if objs is None or len(objs) != self.size:
                got = "None" if objs is None else f"{len(objs)} objects"
                raise ValueError(f"scatter on root {root} needs one object per rank ({self.size}), got {got}")
            ordered = [None] * self.size
            for ours, theirs in enumerate(self._torch):
                ordered[theirs] = objs[ours]
        box: list[Any] = [None]
        dist.scatter_object_list(box, ordered, src=src, group=self._group)
        return box[0]

    # ---------------------------------------------------------------- buffers
    def bcast_tensor(self, tensor: torch.Tensor, root: int) -> None:
        _check_cpu(tensor)
        dist.broadcast(tensor, src=self._global(root), group=self._group)

    def isend(self, tensor: torch.Tensor, dest: int, tag: int) -> _PointToPoint:
        _check_cpu(tensor)
        return _PointToPoint(dist.isend(tensor, dst=self._global(dest), group=self._group, tag=tag), tensor)

    def irecv(self, tensor: torch.Tensor, source: int, tag: int) -> _PointToPoint:
        _check_cpu(tensor)
        return _PointToPoint(dist.irecv(tensor, src=self._global(source), group=self._group, tag=tag), tensor)

    def ibcast(self, tensor: torch.Tensor, root: int) -> _Collective:
        _check_cpu(tensor)
        work = dist.broadcast(tensor, src=self._global(root), group=self._group, async_op=True)
        return _Collective(work, tensor)

    # ---------------------------------------------------------------- groups and places
    def split(self, ranks: Sequence[int]) -> TorchBackend | None:
        """``dist.new_group`` over the members' global ranks, entered by every rank of the job.
        A group made here cannot be split again (torch would need the ranks outside it to enter
        ``new_group`` too, and they do not call a member group's ``split``)."""
        if self._group is not None:
            raise RuntimeError(
                "the torch backend splits only the job's group: torch.distributed's new_group must be "
                "entered by every rank of the job, and a group made by split() has only its members"
            )
        ranks = [int(r) for r in ranks]
        if not ranks or len(set(ranks)) != len(ranks) or not all(0 <= r < self.size for r in ranks):
            raise ValueError(f"split needs distinct ranks of 0..{self.size - 1}, got {ranks}")
        members = [self._ranks[r] for r in ranks]
        group = dist.new_group(members, timeout=timeout(), backend="gloo")
        if self.rank not in ranks:
            return None
        return TorchBackend(group, members)

    def node_rank(self) -> int:
        """``LOCAL_RANK`` (torchrun) or ``SLURM_LOCALID`` (srun) for the job's group; else (and in a
        group made by :meth:`split`) this rank's index among the group's ranks on the same host,
        from an allgather of host names."""
        if self._group is None:
            for name in ("LOCAL_RANK", "SLURM_LOCALID"):
                text = os.environ.get(name, "")
                if text.isdigit():
                    return int(text)
        hosts = self.allgather(socket.gethostname())
        return hosts[: self.rank].count(hosts[self.rank])

    # ---------------------------------------------------------------- the library
    def library(self) -> str:
        """``torch <version> gloo``."""
        return f"torch {torch.__version__} gloo"

    def device_buffers(self, setting: str = "auto") -> DeviceBuffers:
        """Always ``no``: gloo takes CPU tensors here, so device buffers are staged through host
        memory (``runtime.cuda_aware=on`` is refused; ``QTRAIN_CUDA_AWARE`` speaks for an MPI
        library and is not read)."""
        if setting == "on":
            raise ValueError(
                "runtime.cuda_aware=on needs the MPI backend with a CUDA-aware MPI library: the torch "
                "backend (gloo) takes CPU tensors only (NCCL is not supported yet)"
            )
        if setting == "off":
            return DeviceBuffers("no", "config runtime.cuda_aware=off")
        if setting != "auto":
            raise ValueError(f"runtime.cuda_aware must be auto, on or off, got {setting!r}")
        return DeviceBuffers("no", "gloo takes CPU tensors: device buffers are staged through host memory")

    def threads_may_communicate(self) -> bool:
        """True: c10d's process groups are called from other threads by torch itself (DDP posts
        its allreduces from autograd's device thread), gloo's point-to-point operations lock the
        pair they use, and its collectives are queued under a lock. As with MPI_THREAD_MULTIPLE,
        the order still matters: collectives posted from several threads must be posted in the
        same order on every rank (torch's ``new_group`` documentation says so)."""
        return True

    def abort(self) -> NoReturn:
        """There is no MPI_Abort: flush stdout and stderr and leave with ``os._exit(1)``. torchrun's
        agent sees a worker fail and stops the node's other workers (and the rendezvous tells the
        other nodes' agents); ranks elsewhere see their gloo operations fail when the connections
        to this process close (``test()`` and the blocking calls then raise)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream must not stop the abort
                pass
        os._exit(1)

    def finalize(self) -> None:
        """A barrier, then ``destroy_process_group`` (this group's, or every group for the job's):
        gloo aborts the process when one rank tears down while another still talks to it, and the
        barrier makes every rank arrive first."""
        if not dist.is_initialized():
            return
        dist.barrier(group=self._group)
        dist.destroy_process_group(self._group)


if TYPE_CHECKING:  # the type checker (make lint) verifies that TorchBackend is a Backend, structurally

    def _is_backend(backend: TorchBackend) -> Backend:
        return backend
