"""Who does what in a run: which ranks serve, which work, each worker's index, this rank's backend.

Every place that needs "the servers", "the workers", "worker i's rank" or "how many workers" asks a
:class:`Topology`, which also holds this rank's end of the job's backend (``engine/backend.py``);
nothing else assumes that rank 0 serves. ``runtime.servers`` = K ranks serve (the parameter servers
of DESIGN.md section 8, ranks 0..K-1 by default), each owning a contiguous shard of the parameters
(:class:`~qtrain.engine.partition.Partition`, whose segments name their owner as an index into
``servers``). ``servers[0]``, the **lead**, also owns the run: it keeps the recorder, the trace,
the evaluation and the checkpoints.

The simulator uses the same value with no backend: its virtual workers have the ranks they would
have under ``mpiexec``, so traces and checkpoints look the same.

**Co-located** (``colocated=True``, issue 38's ``runtime.servers: colocated``): every rank both
works and serves, as in DeepSpeed's 1-bit Adam or BytePS's co-located servers. Rank r is worker r
and owner r of 1/N of the segments; ``servers`` and ``workers`` are both every rank, and the roles
are capabilities (``is_server`` and ``is_worker``), not disjoint rank sets. A rank's messages to
itself never reach the backend (gloo refuses a send to oneself, and a rank cannot be both the root
and a receiver of one broadcast): ``runtime/colocated.py`` hands them over in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtrain.engine.backend import Backend


@dataclass(frozen=True)
class Topology:
    world_size: int
    rank: int  # this process (the simulator acts as the server)
    servers: tuple[int, ...]
    backend: Backend | None = None  # this rank's end of the whole job (None in the simulator)
    colocated: bool = False  # every rank works and serves (``servers`` is every rank)

    @classmethod
    def parameter_server(
        cls, world_size: int, rank: int = 0, backend: Backend | None = None, servers: int = 1
    ) -> Topology:
        """The first ``servers`` ranks serve (rank 0 alone by default), the others work."""
        if servers < 1:
            raise ValueError(f"runtime.servers = {servers}: at least 1 rank must serve")
        if world_size <= servers:
            raise ValueError(
                f"a parameter server run with {servers} serving rank(s) needs at least {servers + 1} "
                f"ranks, got {world_size}"
            )
        return cls(world_size, rank, tuple(range(servers)), backend)

    @classmethod
    def colocated_ranks(cls, world_size: int, rank: int = 0, backend: Backend | None = None) -> Topology:
        """Every rank works and serves 1/``world_size`` of the segments (at least 2 ranks)."""
        if world_size < 2:
            raise ValueError(f"a co-located run needs at least 2 ranks, got {world_size}")
        return cls(world_size, rank, tuple(range(world_size)), backend, colocated=True)

    def __post_init__(self) -> None:
        if self.colocated and self.servers != tuple(range(self.world_size)):
            raise ValueError(f"a co-located run's serving ranks are every rank, not {self.servers}")
        if not self.servers or len(set(self.servers)) != len(self.servers):
            raise ValueError(f"serving ranks {self.servers}: at least one, each once")
        if not all(0 <= r < self.world_size for r in (self.rank, *self.servers)):
            raise ValueError(f"ranks {self.rank}, {self.servers} outside a world of {self.world_size}")

    @property
    def workers(self) -> tuple[int, ...]:
        """The working ranks, in worker order (worker i is ``workers[i]``)."""
        if self.colocated:
            return tuple(range(self.world_size))
        return tuple(r for r in range(self.world_size) if r not in self.servers)

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def is_worker(self) -> bool:
        return self.colocated or not self.is_server

    @property
    def server(self) -> int:
        """The lead serving rank (``servers[0]``): the run's recorder, trace, evaluation and
        checkpoints live there; with one server it owns every segment."""
        return self.servers[0]

    @property
    def is_lead(self) -> bool:
        """This rank is the lead serving rank (``servers[0]``)."""
        return self.rank == self.servers[0]

    @property
    def owner(self) -> int | None:
        """This rank's index into ``servers`` (the segments it owns), None on a worker."""
        return self.servers.index(self.rank) if self.is_server else None

    @property
    def is_server(self) -> bool:
        return self.rank in self.servers

    @property
    def worker_index(self) -> int:
        """This rank's 0-based worker index (what seeds its data shard and random streams)."""
        return self.workers.index(self.rank)

    def worker_rank(self, index: int) -> int:
        return self.workers[index]

    def describe(self) -> str:
        if self.colocated:
            share = f"1/{self.world_size}"
            return f"{_ranks(self.workers, 'worker')}, each serving {share} of the model (co-located)"
        return f"{_ranks(self.servers, 'server')}, {_ranks(self.workers, 'worker')}"


def _ranks(ranks: tuple[int, ...], role: str) -> str:
    """ "rank 0 server", "ranks 1..4 workers", "ranks 0, 2 servers"."""
    if len(ranks) == 1:
        return f"rank {ranks[0]} {role}"
    span = ranks == tuple(range(ranks[0], ranks[-1] + 1))
    return f"ranks {f'{ranks[0]}..{ranks[-1]}' if span else ', '.join(map(str, ranks))} {role}s"
