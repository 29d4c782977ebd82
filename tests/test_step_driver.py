"""The step driver (``engine/step.py``) over the in-process channel (``engine/channel.py``): what
the channel hands over, and what it refuses. That the driver over this channel ends with the
parameters of the driver over MPI is tested run by run in test_mpi_train.py (every algorithm)."""

import numpy as np
import pytest
import torch

from qtrain.engine.channel import InProcessChannel
from qtrain.engine.partition import Partition
from qtrain.engine.records import UPLINK_RECORD


def uplink_record(step: int) -> np.ndarray:
    rec = np.zeros(1, dtype=UPLINK_RECORD)
    rec["step"] = step
    return rec


def test_uplinks_come_in_worker_order_with_their_records_and_downlinks_reach_every_worker():
    part = Partition.build(1000, (100, 100), 2)
    ch = InProcessChannel(part, 2)
    ends = [ch.worker(0), ch.worker(1)]
    for w in (1, 0):  # posted out of order
        for seg in part:
            rec = uplink_record(3)
            ends[w].send_uplink(seg, rec, torch.full((4 + w,), w, dtype=torch.uint8))
            rec["step"] = 99  # the channel keeps a copy, as MPI keeps the bytes it was handed
    got = list(ch.uplinks(3))
    assert [seg.index for seg, _, _ in got] == [0, 1]
    for seg, records, messages in got:
        assert list(records["length"]) == [4, 5] and list(records["segment"]) == [seg.index] * 2
        assert list(records["step"]) == [3, 3]
        assert [int(m[0]) for m in messages] == [0, 1]
    for seg in part:
        ch.post_downlink(seg, 3, 1, torch.tensor([7, seg.index], dtype=torch.uint8))
    ch.finish_downlinks(3)
    for end in ends:
        seen = [(seg.index, int(head["flags"]), msg.tolist()) for seg, head, msg in end.downlinks(3)]
        assert seen == [(0, 1, [7, 0]), (1, 1, [7, 1])]


def test_a_missing_uplink_or_downlink_is_named():
    part = Partition.build(100, (100, 100), 1)
    ch = InProcessChannel(part, 2)
    ch.worker(0).send_uplink(part.segments[0], uplink_record(1), torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"step 1, segment 0: no uplink from worker\(s\) \[1\]"):
        next(ch.uplinks(1))
    ch.post_downlink(part.segments[0], 1, 0, torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="step 2, segment 0: the server posted no downlink"):
        next(ch.worker(0).downlinks(2))
