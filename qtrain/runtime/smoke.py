"""Smoke check of every codec over the product's own transport (``runtime/transport.py``) and
the job's backend: the frames, tags, ``isend``/``irecv`` uplinks and ``ibcast`` downlinks a
training step uses.

``mpiexec -n K python -m qtrain.runtime.smoke [SERVERS]`` (K > SERVERS; one serving rank by
default), or ``torchrun --nproc-per-node K -m qtrain.runtime.smoke`` for the torch backend. Each
codec case is one step: every worker encodes its own vector (drawn from its rank) segment by
segment and sends it with ``WorkerTransport.send_uplink``; each serving rank takes the
segments it owns with ``ServerTransport.uplinks`` and answers each with its own vector's encoding
(``post_downlink``); every worker receives every segment with ``downlinks``. Between cases the
frames are resized with ``use_codecs``, as after an uncompressed warm-up.

Every message received is checked twice, independently: its bytes equal the sender's encoding
re-created here, and the values it decodes to equal, compared in float64, the values the encoder
computed for it from its own intermediates (``Codec.quantize``), and for a lossless codec the
sender's vector itself. A routing, framing or length error fails the first check, a decoder
that disagrees with its encoder the second.

Rank 0 prints one line per failed check and then
``smoke: C codecs x S segments: U uplink and D downlink messages checked, F failures``;
the exit status is 0 when F is 0, else 1. tests/test_mpi_smoke.py runs it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from qtrain.codecs import CounterStream, WireFormatError, get_codec
from qtrain.engine.partition import Partition
from qtrain.engine.records import UPLINK_RECORD
from qtrain.engine.topology import Topology

NUMEL = 10_007  # not a multiple of the bucket: exercises the short last bucket
SEGMENTS = 2  # at least, and at least one per serving rank
TIMEOUT_S = 60.0
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
LOSSLESS = frozenset({"none", "sparse"})


def vector(rank: int, name: str) -> torch.Tensor:
    """What rank ``rank`` sends with codec ``name`` (mostly zeros for ``sparse``)."""
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(NUMEL, generator=gen)
    if name == "sparse":
        x[torch.rand(NUMEL, generator=gen) < 0.9] = 0
    return x


def message(codec, rank: int, seg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s segment ``seg`` with ``codec``: (its values, its message, Q(values))."""
    x = vector(rank, codec.name)[seg.slice]
    packed, values = codec.quantize(x, rng=CounterStream(1000 + rank + 7919 * seg.index))
    return x, packed, values


def check(codec, label: str, got: torch.Tensor, sender: int, seg, direction: str) -> list[str]:
    """The failures of one received message (none when it is what ``sender`` sent)."""
    x, expected, values = message(codec, sender, seg)
    where = f"{label}: {direction} segment {seg.index} from rank {sender}"
    failures = []
    if not torch.equal(got.cpu(), expected):
        failures.append(f"{where}: its {got.numel()} bytes differ from the sender's {expected.numel()}")
    try:
        decoded = codec.decode(got.cpu().clone()).double()
    except WireFormatError as e:
        return [*failures, f"{where}: does not decode ({e})"]
    if not torch.equal(decoded, values.double()):
        failures.append(f"{where}: decodes to other values than its encoder computed")
    if codec.name in LOSSLESS and not torch.equal(decoded, x.double()):
        failures.append(f"{where}: a lossless codec decodes to other values than were sent")
    return failures


def serve_case(transport, codec, label: str, step: int, rank: int) -> tuple[int, list[str]]:
    """A serving rank's step: check its segments' uplinks, answer each with its own encoding."""
    checked, failures = 0, []
    transport.post_uplinks()
    for seg, _records, messages in transport.uplinks(step):
        for sender, got in zip(transport.topology.workers, messages, strict=True):
            failures += check(codec, label, got, sender, seg, "uplink")
            checked += 1
        transport.post_downlink(seg, step, 0, message(codec, rank, seg)[1])
    transport.finish_downlinks(step)
    return checked, failures


def work_case(transport, codec, label: str, step: int, rank: int) -> tuple[int, list[str]]:
    """A worker's step: send every segment, check every segment's downlink from its owner."""
    checked, failures = 0, []
    for seg in transport.partition:
        record = np.zeros(1, dtype=UPLINK_RECORD)
        record["step"] = step
        transport.send_uplink(seg, record, message(codec, rank, seg)[1])
    transport.post_downlinks(step)
    for seg, _head, got in transport.downlinks(step):
        failures += check(codec, label, got, transport.topology.servers[seg.owner], seg, "downlink")
        checked += 1
    transport.finish_sends(step)
    return checked, failures


def main(argv: list[str]) -> int:
    from qtrain.runtime.backends import world
    from qtrain.runtime.transport import open_transport

    backend = world()
    rank, size = backend.rank, backend.size
    servers = int(argv[0]) if argv else 1
    if size <= servers:
        print(f"smoke: {servers} serving rank(s) need at least {servers + 1} ranks", file=sys.stderr)
        return 1
    topo = Topology.parameter_server(size, rank, backend, servers=servers)
    codecs = [(get_codec(name, **params), f"{name}{params or ''}") for name, params in CASES]
    part = Partition.build(NUMEL, tuple(c.bucket for c, _ in codecs), max(SEGMENTS, servers), servers=servers)
    first = codecs[0][0]
    transport = open_transport(topo, part, first, first, torch.device("cpu"), False, TIMEOUT_S)
    counts, failures = [0, 0], []
    for step, (codec, label) in enumerate(codecs, start=1):
        transport.use_codecs(codec, codec)
        if topo.is_server:
            n, bad = serve_case(transport, codec, label, step, rank)
        else:
            n, bad = work_case(transport, codec, label, step, rank)
        counts[0 if topo.is_server else 1] += n
        failures += bad
    everyone = backend.gather((counts, failures), root=0)
    if rank == 0:
        up = sum(c[0] for c, _ in everyone)
        down = sum(c[1] for c, _ in everyone)
        found = [f for _, fs in everyone for f in fs]
        for f in found:
            print(f"smoke: FAIL {f}", file=sys.stderr)
        print(
            f"smoke: {len(CASES)} codecs x {len(part)} segments: {up} uplink and {down} downlink messages "
            f"checked, {len(found)} failures"
        )
    ok = backend.bcast(not found if rank == 0 else None, root=0)
    backend.finalize()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
