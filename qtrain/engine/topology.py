"""Who does what in a run: which ranks serve, which work, each worker's index, the communicator.

Every place that needs "the server", "the workers", "worker i's rank" or "how many workers" asks a
:class:`Topology`; nothing else assumes that rank 0 serves. Today one rank serves (the parameter
server of DESIGN.md); the shape allows K serving ranks, each owning a contiguous shard of the
parameters (see :class:`~qtrain.engine.partition.Partition`, whose segments name their owner).

The simulator uses the same value with no communicator: its virtual workers have the ranks they
would have under ``mpiexec``, so traces and checkpoints look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVING_RANKS = 1  # ranks that serve in a parameter-server run (the rest work)


@dataclass(frozen=True)
class Topology:
    world_size: int
    rank: int  # this process (the simulator acts as the server)
    servers: tuple[int, ...]
    comm: object | None = None  # the MPI communicator of the world (None in the simulator)

    @classmethod
    def parameter_server(cls, world_size: int, rank: int = 0, comm: object | None = None) -> Topology:
        """The first SERVING_RANKS ranks serve (rank 0), the others work."""
        if world_size <= SERVING_RANKS:
            raise ValueError(
                f"a parameter server run needs at least {SERVING_RANKS + 1} ranks, got {world_size}"
            )
        return cls(world_size, rank, tuple(range(SERVING_RANKS)), comm)

    def __post_init__(self):
        if len(self.servers) != 1:
            raise ValueError(f"{len(self.servers)} serving ranks: only one server is implemented")
        if not all(0 <= r < self.world_size for r in (self.rank, *self.servers)):
            raise ValueError(f"ranks {self.rank}, {self.servers} outside a world of {self.world_size}")

    @property
    def workers(self) -> tuple[int, ...]:
        """The working ranks, in worker order (worker i is ``workers[i]``)."""
        return tuple(r for r in range(self.world_size) if r not in self.servers)

    @property
    def num_workers(self) -> int:
        return self.world_size - len(self.servers)

    @property
    def server(self) -> int:
        """The serving rank (the owner of every segment while there is one server)."""
        return self.servers[0]

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
        servers = ", ".join(map(str, self.servers))
        w = self.workers
        span = f"{w[0]}..{w[-1]}" if w == tuple(range(w[0], w[-1] + 1)) else ", ".join(map(str, w))
        return f"rank {servers} server, ranks {span} workers"
