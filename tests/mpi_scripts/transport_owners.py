"""Run under mpiexec with K serving ranks (argv: K, codec): every worker sends each segment's
uplink to its owner, each owner checks what it received and broadcasts its own segments'
downlinks on its communicator; every worker checks every downlink. Two steps, so the frames are
reused. Prints one "ok" line per rank; exits non-zero on any mismatch."""

import sys

import numpy as np
import torch

from qtrain.codecs import get_codec
from qtrain.engine.partition import Partition
from qtrain.engine.records import UPLINK_RECORD
from qtrain.engine.topology import Topology
from qtrain.runtime.backends.mpi import MpiBackend
from qtrain.runtime.transport import open_transport

K, CODEC = int(sys.argv[1]), sys.argv[2]
backend = MpiBackend()
topo = Topology.parameter_server(backend.size, backend.rank, backend, servers=K)
codec = get_codec(CODEC, bucket=64)
part = Partition.build(64 * 10, (64,), count=5, servers=K)
t = open_transport(topo, part, codec, codec, torch.device("cpu"), False, 30.0)


def message(seg, step, who):
    """A recognisable message of the codec's size for (segment, step, sender)."""
    n = codec.wire_bytes(seg.numel)
    return torch.full((n,), (seg.index * 31 + step * 7 + who) % 251, dtype=torch.uint8)


for step in (1, 2):
    if topo.is_server:
        t.post_uplinks()
        got = []
        for seg, records, messages in t.uplinks(step):
            assert seg.owner == topo.owner and list(records["step"]) == [step] * topo.num_workers, seg
            for w, m in enumerate(messages):
                assert torch.equal(m, message(seg, step, topo.workers[w])), (topo.rank, seg.index, w)
            got.append(seg.index)
            t.post_downlink(seg, step, 0, message(seg, step, 200 + topo.rank))
        t.finish_downlinks(step)
        assert sorted(got) == [s.index for s in part.owned_by(topo.owner)], got
    else:
        for seg in part:
            rec = np.zeros(1, dtype=UPLINK_RECORD)
            rec["step"] = step
            t.send_uplink(seg, rec, message(seg, step, topo.rank))
        t.post_downlinks(step)
        seen = []
        for seg, head, msg in t.downlinks(step):
            owner = topo.servers[seg.owner]
            assert int(head["segment"]) == seg.index and int(head["step"]) == step, (topo.rank, head)
            assert torch.equal(msg, message(seg, step, 200 + owner)), (topo.rank, seg.index)
            seen.append(seg.index)
        t.finish_sends(step)
        assert sorted(seen) == list(range(len(part))), seen
for k, group in enumerate(t.comms.down):  # each owner's communicator in its broadcast order
    if group.backend is not None:
        assert group.backend.rank == group.local(topo.rank), (topo.rank, k, group.ranks)
        if K > 1:
            assert group.ranks[1] == topo.workers[k % topo.num_workers], (k, group.ranks)
owners = sorted({s.owner for s in part})
print(f"ok rank {topo.rank} owners {owners} segments {len(part)}", flush=True)
