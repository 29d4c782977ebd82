"""The backend contract (``engine/backend.py``), checked on 3 ranks by the same script under every
backend (``tests/test_backend_contract.py`` launches it):

    QTRAIN_BACKEND=mpi mpiexec -n 3 python tests/backend_contract_script.py
    python -m torch.distributed.run --standalone --nproc-per-node 3 tests/backend_contract_script.py

Every check uses values that a wrong implementation gets wrong: non-zero roots, rank-dependent
payloads and sizes, receives posted in the opposite order to the sends, a group whose order is
not sorted. Each rank prints ``contract ok rank R`` at the end; a failed check prints the
traceback and ends the job with ``abort()``.

With the argument ``abort``, rank 1 calls ``abort()`` while the others wait in a broadcast from
it: the launcher must end the whole job with a non-zero status.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import torch

from qtrain.engine.backend import Backend, DeviceBuffers
from qtrain.runtime.backends import world
from qtrain.runtime.waiting import wait_all

WAIT_S = 30.0


def check(what: str, got, expected) -> None:
    if isinstance(expected, torch.Tensor):
        ok = isinstance(got, torch.Tensor) and got.dtype == expected.dtype and torch.equal(got, expected)
    else:
        ok = got == expected
    if not ok:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


def objects(b: Backend, tag: str) -> None:
    """The pickled collectives, with rank-dependent values and roots other than 0."""
    r, n = b.rank, b.size
    check(f"{tag} allgather", b.allgather((tag, r, [r] * r)), [(tag, i, [i] * i) for i in range(n)])
    root = n - 1
    got = b.gather({"from": r}, root=root)
    check(f"{tag} gather on {root}", got, [{"from": i} for i in range(n)] if r == root else None)
    check(f"{tag} bcast from {root}", b.bcast(("mine", r), root=root), ("mine", root))
    root = 1 % n
    objs = [f"{tag} for {i} from {root}" for i in range(n)] if r == root else None
    check(f"{tag} scatter from {root}", b.scatter(objs, root=root), f"{tag} for {r} from {root}")


def buffers(b: Backend) -> None:
    """bcast_tensor, and isend/irecv around a ring with two tags whose receives are posted in the
    opposite order to the sends, each tag with its own size and dtype."""
    r, n = b.rank, b.size
    t = torch.full((5,), r + 0.25, dtype=torch.float64)
    b.bcast_tensor(t, root=2)
    check("bcast_tensor float64 from 2", t, torch.full((5,), 2.25, dtype=torch.float64))
    u = torch.full((7,), 10 + r, dtype=torch.uint8)
    b.bcast_tensor(u, root=1)
    check("bcast_tensor uint8 from 1", u, torch.full((7,), 11, dtype=torch.uint8))

    def payload5(src: int) -> torch.Tensor:
        return torch.arange(4 + src, dtype=torch.float32) + 100 * src

    def payload7(src: int) -> torch.Tensor:
        return -torch.arange(9 + 2 * src, dtype=torch.float64) - 0.5 * src

    dest, source = (r + 1) % n, (r - 1) % n
    in7 = torch.zeros(9 + 2 * source, dtype=torch.float64)
    in5 = torch.zeros(4 + source, dtype=torch.float32)
    recv7 = b.irecv(in7, source=source, tag=7)
    recv5 = b.irecv(in5, source=source, tag=5)
    send5 = b.isend(payload5(r), dest=dest, tag=5)
    send7 = b.isend(payload7(r), dest=dest, tag=7)
    wait_all([recv7, recv5, send5, send7], WAIT_S, "contract isend/irecv", peers=[source, source, dest, dest])
    check(f"irecv tag 5 from {source}", in5, payload5(source))
    check(f"irecv tag 7 from {source}", in7, payload7(source))


def threads(b: Backend) -> None:
    """Where the backend says other threads may communicate, a send posted from one arrives."""
    may = b.threads_may_communicate()
    check("threads_may_communicate is a bool", type(may), bool)
    if not b.allgather(may) == [True] * b.size:
        return
    r, n = b.rank, b.size
    got = torch.zeros(3, dtype=torch.float32)
    recv = b.irecv(got, source=(r - 1) % n, tag=11)
    sends = []
    thread = threading.Thread(
        target=lambda: sends.append(b.isend(torch.full((3,), float(r)), dest=(r + 1) % n, tag=11))
    )
    thread.start()
    thread.join()
    wait_all([recv, *sends], WAIT_S, "contract isend from a thread")
    check("isend from another thread", got, torch.full((3,), float((r - 1) % n)))


def groups(b: Backend) -> None:
    """split((2, 0)): the group numbers its members in the given order (world 2 is its rank 0)."""
    sub = b.split((2, 0))
    if b.rank == 1:
        check("split on a rank outside it", sub, None)
        return
    assert sub is not None
    check("split rank", (sub.rank, sub.size), ({2: 0, 0: 1}[b.rank], 2))
    down = torch.full((6,), float(b.rank), dtype=torch.float32)
    wait_all([sub.ibcast(down, root=0)], WAIT_S, "contract ibcast in the group", peers=[2])
    check("ibcast from group rank 0 (world 2)", down, torch.full((6,), 2.0, dtype=torch.float32))
    got = sub.gather(("world", b.rank), root=1)
    expected = [("world", 2), ("world", 0)] if b.rank == 0 else None
    check("group gather on group rank 1 (world 0)", got, expected)
    objects(sub, "group")
    # a point-to-point message from group rank 0 (world 2) to group rank 1 (world 0)
    buf = torch.zeros(5, dtype=torch.uint8)
    if sub.rank == 0:
        req = sub.isend(torch.arange(5, dtype=torch.uint8) + 40, dest=1, tag=3)
    else:
        req = sub.irecv(buf, source=0, tag=3)
    wait_all([req], WAIT_S, "contract isend/irecv in the group")
    if sub.rank == 1:
        check("group irecv from group rank 0 (world 2)", buf, torch.arange(5, dtype=torch.uint8) + 40)
    check("group node_rank (one host)", sub.node_rank(), sub.rank)
    if b.name == "torch":  # torch's new_group needs the whole job: a group is not split again
        try:
            sub.split((0,))
        except RuntimeError:
            pass
        else:
            raise AssertionError("split of a torch group made by split() did not refuse")


def library(b: Backend) -> None:
    text = b.library()
    check("library is one line", isinstance(text, str) and bool(text) and "\n" not in text, True)
    if b.name == "torch":
        named = text.startswith(f"torch {torch.__version__}") and "gloo" in text
        check("library names torch and gloo", named, True)
    buffers_off = b.device_buffers("off")
    check("device_buffers(off)", (type(buffers_off), buffers_off.answer), (DeviceBuffers, "no"))
    check("device_buffers(auto) answers", b.device_buffers("auto").answer in ("yes", "no", "unknown"), True)
    if b.name == "torch":  # gloo takes CPU tensors: "on" is refused, not granted
        try:
            b.device_buffers("on")
        except ValueError:
            pass
        else:
            raise AssertionError("the torch backend granted device_buffers('on')")
    else:
        check("device_buffers(on)", b.device_buffers("on").answer, "yes")
    try:
        b.device_buffers("banana")
    except ValueError:
        pass
    else:
        raise AssertionError("device_buffers('banana') did not raise ValueError")


def contract(b: Backend) -> None:
    check("name", b.name in ("mpi", "torch"), True)
    check("size", b.size, 3)
    check("node_rank (one host)", b.node_rank(), b.rank)
    objects(b, "world")
    buffers(b)
    threads(b)
    groups(b)
    library(b)


def say(line: str) -> None:
    """One line on stdout in one write: the ranks share the launcher's pipe."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def main() -> None:
    b = world()
    try:
        if sys.argv[1:] == ["abort"]:
            b.allgather(None)
            if b.rank == 1:
                say(f"rank {b.rank} aborts")
                b.abort()
            # no communication that the dead rank's absence could end: only the abort (MPI_Abort,
            # or the launcher ending the job's other processes) may end this rank
            time.sleep(60)
            say(f"rank {b.rank} outlived the abort")
            return
        contract(b)
        b.allgather(None)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        b.abort()
    b.finalize()
    say(f"contract ok rank {b.rank}")


if __name__ == "__main__":
    main()
