"""The server's pipeline order, with a scripted backend: segments are taken in the order their
uplinks complete, downlink broadcasts are posted in segment order whatever order they are queued
in, and a stalled gather names the lowest incomplete segment and its silent workers."""

import numpy as np
import pytest
import torch

from qtrain.codecs import get_codec
from qtrain.engine.partition import Partition
from qtrain.engine.records import DOWNLINK_RECORD, UPLINK_RECORD
from qtrain.engine.topology import Topology
from qtrain.runtime.transport import ServerTransport
from qtrain.runtime.waiting import Stalled, wait_some


class ScriptedRequest:
    def __init__(self, comm, key, fill):
        self.comm, self.key, self.fill, self.done = comm, key, fill, False

    def test(self):
        # a receive completes only when it is the next one in the script: several may complete in
        # one sweep, but never out of the scripted order
        if not self.done and self.comm.script and self.comm.script[0] == self.key:
            self.comm.script.pop(0)
            self.fill()
            self.done = True
        return self.done


class ScriptedComm:
    """The backend's irecv completes in the order of ``script`` (a list of (source, tag)); ibcast
    completes at once and is logged with the segment its record names."""

    def __init__(self, script, payload):
        self.script, self.payload, self.bcasts = list(script), payload, []

    def irecv(self, buf, source, tag):
        def fill():
            data = self.payload(source, tag)
            buf[: len(data)] = torch.from_numpy(data)

        return ScriptedRequest(self, (source, tag), fill)

    def ibcast(self, buf, root):
        head = np.frombuffer(bytes(buf[: DOWNLINK_RECORD.itemsize].numpy()), dtype=DOWNLINK_RECORD)[0]
        self.bcasts.append(int(head["segment"]))

        class Done:
            def test(self):
                return True

        return Done()


def server_transport(script, segments=3, workers=2, step=7, timeout_s=5.0):
    codec = get_codec("sign", bucket=64)
    part = Partition.build(64 * 3 * segments, (64,), segments)
    by_tag = {s.tag: s for s in part}
    msg_bytes = [codec.wire_bytes(s.numel) for s in part]

    def payload(source, tag):
        seg = by_tag[tag]
        rec = np.zeros(1, dtype=UPLINK_RECORD)
        rec["step"], rec["segment"], rec["length"] = step, seg.index, msg_bytes[seg.index]
        body = np.full(msg_bytes[seg.index], source, dtype=np.uint8)
        return np.concatenate([rec.view(np.uint8), body])

    comm = ScriptedComm([(r, part.segments[k].tag) for r, k in script], payload)
    topo = Topology.parameter_server(workers + 1, 0, comm)
    t = ServerTransport(topo, part, codec, codec, timeout_s)
    return t, part, comm


def test_segments_are_taken_in_completion_order_with_messages_in_worker_order():
    # segment 2 completes first, then 0, then 1 (worker 2's copy of segment 0 arrives last but one)
    script = [(1, 2), (2, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    t, part, _ = server_transport(script)
    t.post_uplinks()
    got = []
    for seg, records, messages in t.uplinks(7):
        got.append(seg.index)
        assert list(records["segment"]) == [seg.index, seg.index]
        assert [int(m[0]) for m in messages] == [1, 2]  # worker order: ranks 1, 2
    assert got == [2, 0, 1]


def test_downlinks_are_broadcast_in_segment_order_whatever_order_they_are_queued_in():
    t, part, comm = server_transport([])
    msg = torch.zeros(get_codec("sign", bucket=64).wire_bytes(part.segments[0].numel), dtype=torch.uint8)
    t.post_downlink(part.segments[2], 7, 0, msg)
    assert comm.bcasts == []  # segment 2 must wait for 0 and 1
    t.post_downlink(part.segments[0], 7, 0, msg)
    assert comm.bcasts == [0]
    t.post_downlink(part.segments[1], 7, 0, msg)
    assert comm.bcasts == [0, 1, 2]
    t.finish_downlinks(7)
    t.post_downlink(part.segments[0], 8, 0, msg)  # the next step starts again at segment 0
    assert comm.bcasts == [0, 1, 2, 0]


def test_a_step_whose_downlinks_were_not_all_queued_cannot_finish():
    t, part, _ = server_transport([])
    msg = torch.zeros(get_codec("sign", bucket=64).wire_bytes(part.segments[0].numel), dtype=torch.uint8)
    t.post_downlink(part.segments[0], 7, 0, msg)
    with pytest.raises(RuntimeError, match="segments 1.. were never queued"):
        t.finish_downlinks(7)


def test_a_stalled_gather_names_the_lowest_incomplete_segment_and_its_silent_workers():
    # segment 0 is in; segment 1 waits for worker rank 2, segment 2 for both
    script = [(1, 0), (2, 0), (1, 1)]
    t, _, _ = server_transport(script, timeout_s=0.2)
    t.post_uplinks()
    arrivals = t.uplinks(7)
    assert next(arrivals)[0].index == 0
    with pytest.raises(Stalled, match=r"'uplink gather' \(step 7, segment 1\) from rank\(s\) 2$"):
        next(arrivals)


def test_an_uplink_for_another_step_is_refused_naming_the_rank():
    script = [(1, 0), (2, 0)]
    t, _, _ = server_transport(script, segments=1)
    t.post_uplinks()
    with pytest.raises(RuntimeError, match="rank 1 sent a .* for step 7, segment 0; expected .* for step 8"):
        next(t.uplinks(8))


def test_waits_sleep_from_the_start_when_the_node_is_oversubscribed(monkeypatch):
    from qtrain.runtime import placement, waiting

    monkeypatch.setattr(placement.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not placement.oversubscribed(2, 1)
    assert placement.oversubscribed(3, 1) and placement.oversubscribed(2, 2)
    waiting.set_spin(False)
    assert waiting.SPIN_S == 0.0
    waiting.set_spin(True)
    assert waiting.SPIN_S == 0.002


def test_wait_some_returns_what_completed_and_names_the_stall():
    class Flag:
        def __init__(self, done):
            self.done = done

        def test(self):
            return self.done

    assert wait_some([None, Flag(False), Flag(True)], 1.0, "x", lambda: "") == [2]
    with pytest.raises(Stalled, match=r"no progress for 0.05 s in phase 'uplink gather' \(step 3\)$"):
        wait_some([Flag(False)], 0.05, "uplink gather", lambda: " (step 3)")
