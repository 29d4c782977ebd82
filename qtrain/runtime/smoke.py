"""MPI smoke test of the codec layer: workers send real packed buffers to rank 0, which checks them.

``mpiexec -n K python -m qtrain.runtime.smoke`` (K >= 2). Every worker rank r encodes a vector
drawn from seed r with each codec. Fixed-size messages go to rank 0 with one ``Gather`` of raw
uint8 buffers (sizes known in advance from ``wire_bytes``); variable-size ones send their length
first (``Gather``), then the bytes (``Gatherv``). Rank 0 re-creates every worker's input, encodes
it itself, and checks that the bytes it received are identical and decode to the same values.
Exit status 0 on success, 1 with a message naming the codec and rank otherwise.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from qtrain.codecs import get_codec

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
    return x, get_codec(name, **params).encode(x, generator=gen)


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        print("smoke: needs at least 2 ranks (mpiexec -n 3 ...)", file=sys.stderr)
        return 1
    failures = []
    for name, params in CASES:
        codec = get_codec(name, **params)
        mine = worker_message(rank, name, params)[1] if rank else torch.zeros(0, dtype=torch.uint8)
        if codec.fixed_size:
            nbytes = codec.wire_bytes(NUMEL)
            send = mine.numpy() if rank else np.zeros(nbytes, dtype=np.uint8)
            recv = np.empty((size, nbytes), dtype=np.uint8) if rank == 0 else None
            comm.Gather(send, recv, root=0)
            messages = [torch.from_numpy(recv[r]) for r in range(1, size)] if rank == 0 else []
        else:
            counts = np.empty(size, dtype=np.int64) if rank == 0 else None
            comm.Gather(np.array([mine.numel()], dtype=np.int64), counts, root=0)
            if rank == 0:
                recv = np.empty(int(counts.sum()), dtype=np.uint8)
                comm.Gatherv(mine.numpy(), [recv, counts, MPI.BYTE], root=0)
                offsets = np.concatenate([[0], np.cumsum(counts)])
                messages = [torch.from_numpy(recv[offsets[r] : offsets[r + 1]]) for r in range(1, size)]
            else:
                comm.Gatherv(mine.numpy(), None, root=0)
        if rank == 0:
            for r, got in enumerate(messages, start=1):
                x, expected = worker_message(r, name, params)
                if not torch.equal(got, expected):
                    failures.append(f"{name}{params}: bytes from rank {r} differ from the local encoding")
                elif not torch.equal(codec.decode(got), codec.decode(expected)):
                    failures.append(f"{name}{params}: rank {r} message decodes differently")
    if rank == 0:
        for f in failures:
            print(f"smoke: FAIL {f}", file=sys.stderr)
        print(f"smoke: {len(CASES)} codecs x {size - 1} workers, {len(failures)} failures")
    ok = comm.bcast(not failures, root=0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
