"""Segments complete during backward exactly when every parameter overlapping them is done."""

import torch
from torch import nn

from qtrain.engine.flat import FlatModel
from qtrain.engine.partition import Partition
from qtrain.engine.readiness import SegmentReadiness


def model():
    torch.manual_seed(0)
    return FlatModel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.device("cpu"))


def test_segments_complete_when_their_parameters_do_and_in_backward_order():
    m = model()
    part = Partition.build(m.numel, (8, 8), 4)
    readiness = SegmentReadiness(m.layout, part)
    events, seen = [], []

    def on_param(i):
        seen.append(i)
        for seg in readiness.param_ready(i):
            lo, hi = seg.start, seg.stop
            # every parameter overlapping the segment has reported, no other one is needed
            need = {
                j
                for j, (_, off, shape) in enumerate(m.layout)
                if off < hi and lo < off + torch.Size(shape).numel()
            }
            assert need <= set(seen)
            events.append((seg.index, m.grads[lo:hi].clone()))

    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    m.loss_and_grad(x, y, "classification", on_param)
    assert readiness.rest() == []
    assert sorted(i for i, _ in events) == [0, 1, 2, 3]
    assert events[0][0] == 0, "segment 0 is the tail: backward finishes it first"
    for index, grads in events:  # what was sent mid-backward is the final gradient
        seg = list(part)[index]
        assert torch.equal(grads, m.grads[seg.start : seg.stop])
    assert set(seen) == set(range(len(m.layout)))


def test_a_parameter_without_gradient_leaves_its_segments_to_rest():
    m = model()
    part = Partition.build(m.numel, (8, 8), 2)
    readiness = SegmentReadiness(m.layout, part)
    readiness.begin()
    done = [s.index for i in range(len(m.layout) - 1) for s in readiness.param_ready(i)]
    rest = [s.index for s in readiness.rest()]
    assert sorted(done + rest) == [0, 1] and rest
    assert readiness.rest() == []


def test_overlap_setting_per_device_and_thread_level():
    from qtrain.runtime.overlap import uses_overlap

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert uses_overlap("auto", cpu, False)[0] and uses_overlap("on", cpu, False)[0]
    assert not uses_overlap("off", cpu, True)[0]
    assert not uses_overlap("auto", gpu, True)[0]
    on, why = uses_overlap("on", gpu, False)
    assert not on and "MPI_THREAD_MULTIPLE" in why
    assert uses_overlap("on", gpu, True)[0]
