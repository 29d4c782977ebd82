"""MPI smoke test of the codec layer: workers send real packed buffers to the server rank, which
checks them.

``mpiexec -n K python -m qtrain.runtime.smoke`` (K >= 2). Every worker rank r encodes a vector
drawn from seed r with each codec. Fixed-size messages go to the server rank with one ``Gather`` of raw
uint8 buffers (sizes known in advance from ``wire_bytes``); variable-size ones send their length
first (``Gather``), then the bytes (``Gatherv``). The server re-creates every worker's input, encodes
it itself, and checks that the bytes it received are identical and decode to the same values.
Exit status 0 on success, 1 with a message naming the codec and rank otherwise.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from qtrain.codecs import CounterStream, get_codec
from qtrain.engine.topology import Topology

NUMEL = 10_007  # not a multiple of the bucket: exercises the short last bucket
CASES = [
    ("none", {}),
    ("fp16", {}),
    ("sign", {}),
    ("uniform", {"bits": 3, "rounding": "nearest"}),
    ("uniform", {"bits": 2}),
    ("ternary", {}),
    ("threshold", {}),
    ("topk", {"ratio": 0.05}),
    ("sparse", {}),
]


def worker_message(rank: int, name: str, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(NUMEL, generator=gen)
    if name == "sparse":
        x[torch.rand(NUMEL, generator=gen) < 0.9] = 0
    return x, get_codec(name, **params).encode(x, rng=CounterStream(1000 + rank))


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        print("smoke: needs at least 2 ranks (mpiexec -n 3 ...)", file=sys.stderr)
        return 1
    topo = Topology.parameter_server(size, rank, comm)
    root, serving = topo.server, topo.is_server
    failures = []
    for name, params in CASES:
        codec = get_codec(name, **params)
        mine = torch.zeros(0, dtype=torch.uint8) if serving else worker_message(rank, name, params)[1]
        if codec.fixed_size:
            nbytes = codec.wire_bytes(NUMEL)
            send = np.zeros(nbytes, dtype=np.uint8) if serving else mine.numpy()
            recv = np.empty((size, nbytes), dtype=np.uint8) if serving else None
            comm.Gather(send, recv, root=root)
            messages = [torch.from_numpy(recv[r]) for r in topo.workers] if serving else []
        else:
            counts = np.empty(size, dtype=np.int64) if serving else None
            comm.Gather(np.array([mine.numel()], dtype=np.int64), counts, root=root)
            if serving:
                recv = np.empty(int(counts.sum()), dtype=np.uint8)
                comm.Gatherv(mine.numpy(), [recv, counts, MPI.BYTE], root=root)
                offsets = np.concatenate([[0], np.cumsum(counts)])
                messages = [torch.from_numpy(recv[offsets[r] : offsets[r + 1]]) for r in topo.workers]
            else:
                comm.Gatherv(mine.numpy(), None, root=root)
        if serving:
            for r, got in zip(topo.workers, messages, strict=True):
                x, expected = worker_message(r, name, params)
                if not torch.equal(got, expected):
                    failures.append(f"{name}{params}: bytes from rank {r} differ from the local encoding")
                elif not torch.equal(codec.decode(got), codec.decode(expected)):
                    failures.append(f"{name}{params}: rank {r} message decodes differently")
    if serving:
        for f in failures:
            print(f"smoke: FAIL {f}", file=sys.stderr)
        print(f"smoke: {len(CASES)} codecs x {topo.num_workers} workers, {len(failures)} failures")
    ok = comm.bcast(not failures, root=root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
