"""The backend: one rank's end of every message between the ranks of a job (DESIGN.md section 9).

Everything that crosses from one rank to another goes through a :class:`Backend`, and nothing
else talks to a communication library:

- the step's uplinks and downlinks (``runtime/transport.py``): ``isend``/``irecv`` of a segment's
  frame into preallocated rows, ``ibcast`` of a downlink from its owner, each a :class:`Request`
  that the deadline waits (``runtime/waiting.py``) test;
- what travels between steps, as pickled objects: control reports, checkpoint snapshots, model
  buffers, the final report (``gather``/``bcast``), the serving ranks' step parts
  (``runtime/shard_serving.py``), clipping's sums of squares (``allgather``);
- start-up: the agreement on config, versions and devices (``allgather``), the output directory
  (``bcast``), model and param-group sharing (``gather``, ``bcast``, ``bcast_tensor``), resume's
  scatter of each rank's state (``scatter``), clock synchronisation (``isend``/``irecv``), the
  node-local rank (``node_rank``);
- the end: ``abort`` ends the whole job from one rank; ``finalize`` closes a clean one.

Implementations: ``runtime/backends/mpi.py`` (mpi4py, the only module that imports it) and
``runtime/backends/torch_dist.py`` (``torch.distributed``: gloo). The simulator's virtual workers
live in one process and hand their messages over as objects: the step channel of
``engine/channel.py`` (:class:`~qtrain.engine.channel.InProcessChannel`) is its end.

Ranks are numbered within the backend: a group made by :meth:`Backend.split` numbers its members
0.. in the order they were given. Buffers are contiguous ``torch.Tensor`` objects: CPU tensors
always, CUDA ones where :meth:`Backend.device_buffers` says the library takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import torch


class Request(Protocol):
    """A posted non-blocking operation."""

    def test(self) -> bool:
        """Whether it has completed (and drive the library's progress); never blocks."""
        ...


@dataclass(frozen=True)
class DeviceBuffers:
    """Whether the library takes CUDA device buffers, and how that was decided."""

    answer: str  # "yes" | "no" | "unknown"
    how: str

    @property
    def enabled(self) -> bool:
        return self.answer == "yes"


class Backend(Protocol):
    """One rank's end of a group of ranks (the whole job, or a group from :meth:`split`)."""

    name: str  # "mpi" | "torch"
    rank: int  # this process's rank in the group
    size: int  # ranks in the group

    # ---------------------------------------------------------------- pickled objects (between steps)
    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        ...

    def gather(self, obj: Any, root: int) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on ``root``; None elsewhere."""
        ...

    def bcast(self, obj: Any, root: int) -> Any:
        """``root``'s ``obj`` on every rank."""
        ...

    def scatter(self, objs: Sequence[Any] | None, root: int) -> Any:
        """``objs[r]`` (given on ``root``, one per rank) on rank r."""
        ...

    # ---------------------------------------------------------------- buffers
    def bcast_tensor(self, tensor: torch.Tensor, root: int) -> None:
        """Overwrite ``tensor`` on every rank with ``root``'s (blocking)."""
        ...

    def isend(self, tensor: torch.Tensor, dest: int, tag: int) -> Request:
        """Post the send of ``tensor`` to ``dest``; it must stay untouched until the request completes."""
        ...

    def irecv(self, tensor: torch.Tensor, source: int, tag: int) -> Request:
        """Post the receive of ``source``'s message with ``tag`` into ``tensor`` (exactly its size)."""
        ...

    def ibcast(self, tensor: torch.Tensor, root: int) -> Request:
        """Post a broadcast of ``root``'s ``tensor`` into every other rank's. Every rank of the
        group posts its broadcasts in the same order."""
        ...

    # ---------------------------------------------------------------- groups and places
    def split(self, ranks: Sequence[int]) -> Backend | None:
        """A group of ``ranks`` (ranks of this group, in that order: its rank i is ``ranks[i]``);
        None on a rank outside it. Collective: every rank of this group calls it, with the same
        ``ranks``, at the same point."""
        ...

    def node_rank(self) -> int:
        """This rank's index among the group's ranks on its node (collective)."""
        ...

    # ---------------------------------------------------------------- the library
    def library(self) -> str:
        """The communication library in one line, e.g. ``MPICH Version: 5.0.2`` or ``torch 2.13.0 gloo``."""
        ...

    def device_buffers(self, setting: str) -> DeviceBuffers:
        """Whether device buffers go to the library directly (``runtime.cuda_aware``: auto, on, off)."""
        ...

    def threads_may_communicate(self) -> bool:
        """Whether a thread other than the one that started the backend may call it (MPI:
        ``MPI_THREAD_MULTIPLE``): a CUDA backward's hooks run on a device thread."""
        ...

    def abort(self) -> NoReturn:
        """End the whole job now, from this rank (the caller has said why)."""
        ...

    def finalize(self) -> None:
        """Close the backend at the end of a clean run (every rank)."""
        ...
