"""Uplink/downlink collective choices, measured: ``Gather`` vs per-worker ``Isend``/``Irecv`` for
the uplink, ``Bcast`` vs ``Ibcast`` + deadline polling for the downlink.

    mpiexec -n 3 python benchmarks/transport.py [--repeats 200]

Prints, per message size, the median seconds of one uplink+downlink round with each choice and
the ratio of qtrain's choice (Irecv rows + Ibcast with polling through the MPI backend, what
``runtime/transport.py`` does) to the plain blocking collectives.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

from qtrain.runtime.backends.mpi import MpiBackend
from qtrain.runtime.waiting import wait_all


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    backend = MpiBackend(comm)  # qtrain's path: the backend's requests, tested by the deadline waits
    rank, size = comm.Get_rank(), comm.Get_size()
    workers = size - 1
    if rank == 0:
        print(f"world {size} ({MPI.Get_library_version().splitlines()[0].strip()}), median of {args.repeats}")
        print(f"{'bytes':>10}{'Gather+Bcast s':>16}{'Irecv+Ibcast s':>16}{'ratio':>8}")
    for nbytes in (1_024, 65_536, 1_048_576, 8_388_608):
        send = np.full(nbytes, rank, dtype=np.uint8)
        gathered = np.empty((size, nbytes), dtype=np.uint8) if rank == 0 else None
        rows = np.empty((workers, nbytes), dtype=np.uint8)
        down = np.empty(nbytes, dtype=np.uint8)

        def collectives(send=send, gathered=gathered, down=down):
            comm.Gather(send, gathered, root=0)
            comm.Bcast(down, root=0)

        def point_to_point(
            send=torch.from_numpy(send), rows=torch.from_numpy(rows), down=torch.from_numpy(down)
        ):
            if rank == 0:
                reqs = [backend.irecv(rows[i], source=i + 1, tag=11) for i in range(workers)]
                wait_all(reqs, 60, "bench uplink", list(range(1, size)))
            else:
                wait_all([backend.isend(send, dest=0, tag=11)], 60, "bench send", [0])
            wait_all([backend.ibcast(down, root=0)], 60, "bench downlink", [0])

        results = []
        for fn in (collectives, point_to_point):
            times = []
            for _ in range(args.repeats):
                comm.Barrier()
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            everyone = comm.gather(times, root=0)  # collective: every rank calls it
            if rank == 0:
                # a round ends when the slowest rank is done: the per-round maximum over ranks
                results.append(statistics.median(max(ts) for ts in zip(*everyone, strict=True)))
        if rank == 0:
            print(f"{nbytes:>10}{results[0]:>16.6f}{results[1]:>16.6f}{results[1] / results[0]:>8.2f}")


if __name__ == "__main__":
    main()
