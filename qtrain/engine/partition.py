"""The flat parameter vector cut into segments: the unit of communication.

A segment is a contiguous range ``[start, stop)`` of the flat vector whose boundaries fall on codec
bucket boundaries (a multiple of ``align``, the least common multiple of both links' buckets), so
encoding a segment on its own gives the same buckets as encoding the whole vector. Segments are
listed in the order the backward pass produces gradients: the flat vector follows the model's
forward order, so segment 0 is its tail (the last layers) and the last segment its head.

Each segment has its own message each way, its own slice of every error buffer and its own MPI
tag; its stochastic rounding draws the Philox counters of its own elements (``codecs.philox``), so
cutting the vector differently changes no draw. ``runtime.segment_bytes`` sets their size (fp32
bytes of parameters; the default, ``config.schema.DEFAULT_SEGMENT_BYTES``, was chosen by
measurement: docs/benchmarks.md), ``runtime.segments`` their number instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qtrain.config.schema import MAX_SEGMENTS  # the bound runtime.segments is validated against

TAG_BASE = 16  # MPI tags below this are left to control messages


@dataclass(frozen=True)
class Segment:
    index: int  # position in backward order
    start: int
    stop: int
    owner: int = 0  # index into Topology.servers of the rank that serves this segment

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def tag(self) -> int:
        """The MPI tag of this segment's frames (``tag + 1``: its message when sent separately)."""
        return TAG_BASE + 2 * self.index


@dataclass(frozen=True)
class Partition:
    numel: int
    align: int
    segments: tuple[Segment, ...]

    @classmethod
    def build(
        cls, numel: int, buckets: tuple[int, ...], count: int = 0, segment_bytes: int = 0, servers: int = 1
    ) -> Partition:
        """``count`` segments of near-equal size, or with ``count`` 0 segments of at most
        ``segment_bytes`` fp32 bytes (0 as well: one segment), aligned to every bucket in
        ``buckets`` (0: unbucketed), and at least ``servers`` of them. Each serving rank owns a
        contiguous run of them in the flat vector (``Segment.owner``; owner 0 the head), the runs'
        segment counts differing by at most one, so with near-equal segments the shards are
        near-equal too. A cut by size balances without tuning: its count is rounded up to a
        multiple of ``servers`` (the buckets permitting), so every owner serves as many; past
        ``MAX_SEGMENTS`` its segments grow instead of the run being refused. ``servers=1`` (one
        serving rank) gives every segment owner 0 and the same cut as before owners existed."""
        align = math.lcm(*(b for b in buckets if b), 1)
        units = -(-numel // align)  # whole buckets counted from the head; the tail one may be short
        if not count and segment_bytes:
            k = max(servers, 1)
            by_size = -(-numel * 4 // segment_bytes)
            count = min(-(-by_size // k) * k, MAX_SEGMENTS // k * k)
        if servers < 1:
            raise ValueError(f"{servers} serving ranks: at least 1")
        if servers > max(units, 1):
            raise ValueError(
                f"{numel} parameters in {align}-element buckets make {units} segment(s) at most: too few "
                f"for {servers} serving ranks to own one each"
            )
        count = max(servers, min(max(1, count), units))
        if count > MAX_SEGMENTS:
            raise ValueError(f"{count} segments: at most {MAX_SEGMENTS} (raise runtime.segment_bytes)")
        # head first; segment sizes within one bucket, the longer ones spread evenly, so any run
        # of c segments (an owner's) is within one bucket of c / count of the vector too
        bounds = [min(numel, align * (i * units // count)) for i in range(count + 1)]
        segments = []
        for index in range(count):
            flat = count - 1 - index  # position from the head of the flat vector
            owner = flat * servers // count
            segments.append(Segment(index, bounds[flat], bounds[flat + 1], owner))
        return cls(numel, align, tuple(segments))

    @classmethod
    def for_setup(cls, setup, numel: int, servers: int) -> Partition:
        """A run's cut: its config's ``runtime.segment_count`` and ``segment_bytes`` over ``numel``
        parameters, on both links' buckets, for ``servers`` serving ranks."""
        rt = setup.cfg.runtime
        buckets = (setup.uplink.codec.bucket, setup.downlink.codec.bucket)
        return cls.build(numel, buckets, rt.segment_count, rt.segment_bytes, servers)

    def owned_by(self, owner: int) -> tuple[Segment, ...]:
        """The segments serving rank ``owner`` (an index into ``Topology.servers``) owns."""
        return tuple(s for s in self.segments if s.owner == owner)

    def shard(self, owner: int) -> slice:
        """The contiguous range of the flat vector that serving rank ``owner`` owns."""
        segs = self.owned_by(owner)
        if not segs:
            raise ValueError(f"serving rank {owner} owns no segment of {self.describe()}")
        return slice(min(s.start for s in segs), max(s.stop for s in segs))

    @property
    def servers(self) -> int:
        """How many serving ranks the segments were cut for (the owners named)."""
        return max(s.owner for s in self.segments) + 1

    def __iter__(self):
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def wire_bytes(self, codec) -> int:
        """Bytes of one step's messages in one direction with ``codec``: one message per segment
        (the upper bound for variable-size codecs)."""
        return sum(codec.wire_bytes(s.numel) for s in self.segments)

    def describe(self) -> str:
        if len(self) == 1:
            return "1 segment"
        sizes = [s.numel for s in self.segments]
        return f"{len(self)} segments of {min(sizes)}..{max(sizes)} elements (aligned to {self.align})"
