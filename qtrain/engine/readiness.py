"""Which segments of the flat gradient the backward pass has finished.

A segment is complete when every parameter overlapping it has had its gradient accumulated:
``FlatModel`` reports each parameter from a post-accumulate-grad hook, and the worker encodes and
posts a segment's uplink the moment it completes, while backward goes on with earlier layers
(Horovod's and DDP's bucket hooks do the same). Segments are cut in backward order, so they
complete roughly in index order; a parameter that gets no gradient (unused in this forward)
never reports, and :meth:`SegmentReadiness.rest` hands its segments over after backward.
"""

from __future__ import annotations


class SegmentReadiness:
    def __init__(self, layout: list[tuple[str, int, tuple[int, ...]]], partition):
        self.segments = list(partition)
        self.param_segments: list[list[int]] = []
        self.count = [0] * len(self.segments)
        for _, offset, shape in layout:
            size = 1
            for d in shape:
                size *= d
            hit = [s.index for s in self.segments if s.start < offset + size and offset < s.stop]
            self.param_segments.append(hit)
            for k in hit:
                self.count[k] += 1
        self.begin()

    def begin(self) -> None:
        """A new backward pass: nothing is complete."""
        self.remaining = list(self.count)
        self.sent = [False] * len(self.segments)

    def param_ready(self, param: int) -> list:
        """Parameter ``param``'s gradient is final: the segments this completes."""
        done = []
        for k in self.param_segments[param]:
            self.remaining[k] -= 1
            if self.remaining[k] == 0 and not self.sent[k]:
                self.sent[k] = True
                done.append(self.segments[k])
        return done

    def rest(self) -> list:
        """After backward: the segments not handed out yet, in index order."""
        out = [s for s in self.segments if not self.sent[s.index]]
        for s in out:
            self.sent[s.index] = True
        return out
