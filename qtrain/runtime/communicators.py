"""The groups of a run with K serving ranks (DESIGN.md section 8), each a backend of its own
(``Backend.split``).

- **down[k]**: serving rank k (``Topology.servers[k]``) and every worker. Owner k broadcasts the
  downlinks of its segments on it, so the broadcasts of different owners never queue behind each
  other: MPI matches non-blocking collectives per communicator in posting order, and on one shared
  communicator owner 1's first broadcast could not complete before owner 0's last was posted.
  Its workers are rotated by k (owner k's first worker is ``workers[k % N]``): a binomial
  broadcast tree makes the first ranks after the root relay copies to the others, and with the
  same order in every owner's communicator the same worker would relay every owner's shard on its
  own link (with K = 4 and 4 workers: 17.4 MB a step on top of its 17.4 MB uplink, the step's
  bottleneck). Rotated, the relaying spreads over the workers; no byte of a message changes.
- **control**: the lead (``servers[0]``) and every worker: the pickled reports between steps
  (checkpoint snapshots, buffers, the final report), which the other serving ranks take no part in.
- **servers**: the serving ranks alone: what the other owners report to the lead after each step
  (``runtime/shard_serving.py``) and their shards at evaluations, checkpoints and the end.

Co-located (``Topology.colocated``: every rank works and serves): down[k] is every rank with
rank k first and the others after it in turn (the same rotation), and control and servers are two
groups of every rank, apart so that the lead's gathers of workers' reports and of owners' parts
never match each other's calls.

With one serving rank every one of them is the whole job's backend itself, so a K = 1 run makes
the calls it made before serving ranks became several. A split is collective over the job:
every rank calls :func:`split` at the same point (when it opens its transport)."""

from __future__ import annotations

from dataclasses import dataclass

from qtrain.engine.backend import Backend
from qtrain.engine.topology import Topology


@dataclass(frozen=True)
class Group:
    """A group's backend and the job's ranks in it (``ranks[i]`` is its rank i)."""

    backend: Backend | None  # None on a rank outside it
    ranks: tuple[int, ...]

    def local(self, world_rank: int) -> int:
        """A world rank's rank in this communicator (e.g. a broadcast's root)."""
        return self.ranks.index(world_rank)

    @property
    def member(self) -> Backend:
        """This rank's backend of the group; a RuntimeError on a rank outside it."""
        if self.backend is None:
            raise RuntimeError(f"this rank is not in the group of ranks {list(self.ranks)}")
        return self.backend


@dataclass(frozen=True)
class Communicators:
    down: tuple[Group, ...]  # per owner (index into Topology.servers)
    control: Group
    servers: Group | None = None  # the serving ranks (None with one)


def split(topology: Topology) -> Communicators:
    """Every rank's view of the run's groups (collective over the job)."""
    world, size = topology.backend, topology.world_size
    workers = topology.workers
    if len(topology.servers) == 1:
        everyone = Group(world, tuple(range(size)))
        return Communicators((everyone,), everyone)
    if world is None:
        raise ValueError("several serving ranks need the job's backend (Topology.backend) to split")
    if topology.colocated:
        every = tuple(range(size))
        down = tuple(_group(world, rotated(every, k)) for k in range(size))
        return Communicators(down, _group(world, every), _group(world, every))
    down = tuple(_group(world, (server, *rotated(workers, k))) for k, server in enumerate(topology.servers))
    control = _group(world, tuple(sorted((topology.server, *workers))))
    return Communicators(down, control, _group(world, tuple(sorted(topology.servers))))


def rotated(workers: tuple[int, ...], k: int) -> tuple[int, ...]:
    """The workers in owner ``k``'s broadcast order: rotated by k, so each owner's tree relays
    through other workers."""
    k %= max(len(workers), 1)
    return (*workers[k:], *workers[:k])


def _group(world: Backend, ranks: tuple[int, ...]) -> Group:
    """A group of ``ranks``, in that order (``ranks[i]`` its rank i)."""
    return Group(world.split(ranks), ranks)
