"""Topology (who serves, who works) and Partition (the flat vector cut into segments)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtrain.engine.partition import MAX_SEGMENTS, Partition
from qtrain.engine.topology import Topology


def test_parameter_server_topology():
    t = Topology.parameter_server(4, rank=2)
    assert t.servers == (0,) and t.server == 0 and t.workers == (1, 2, 3) and t.num_workers == 3
    assert not t.is_server and t.worker_index == 1 and t.worker_rank(1) == 2
    assert Topology.parameter_server(4).is_server
    assert t.describe() == "rank 0 server, ranks 1..3 workers"


def test_topology_refusals():
    with pytest.raises(ValueError, match="at least 2 ranks"):
        Topology.parameter_server(1)
    with pytest.raises(ValueError, match="each once"):
        Topology(5, 0, (1, 1))
    with pytest.raises(ValueError, match="at least 1 rank must serve"):
        Topology.parameter_server(4, servers=0)
    with pytest.raises(ValueError, match="outside a world"):
        Topology(3, 3, (0,))


@given(
    numel=st.integers(0, 50_000),
    up=st.sampled_from([0, 1, 64, 512, 1000]),
    down=st.sampled_from([0, 64, 512]),
    count=st.integers(1, 40),
)
def test_segments_cover_the_vector_in_backward_order_on_bucket_boundaries(numel, up, down, count):
    p = Partition.build(numel, (up, down), count)
    segs = list(p)
    assert 1 <= len(segs) <= count
    assert [s.index for s in segs] == list(range(len(segs)))
    assert segs[0].stop == numel and segs[-1].start == 0, "segment 0 is the tail (last layers)"
    for later, earlier in zip(segs[:-1], segs[1:], strict=True):
        assert earlier.stop == later.start, "contiguous, in reverse order"
    for s in segs[1:]:
        assert s.numel > 0
    for s in segs:
        for b in (up, down):
            if b:
                assert s.start % b == 0, "every boundary is a bucket boundary of both links"
    assert len({s.tag for s in segs}) == len(segs) and min(s.tag for s in segs) >= 16
    sizes = [s.numel for s in segs[1:]]  # the tail segment may hold the short bucket
    if sizes:
        assert max(sizes) - min(sizes) <= p.align


def test_one_segment_is_the_whole_vector():
    (s,) = Partition.build(4810, (512, 512))
    assert (s.start, s.stop, s.index) == (0, 4810, 0)


def test_segment_bytes_sets_the_size():
    p = Partition.build(1_000_000, (512,), segment_bytes=1_000_000)
    assert len(p) == 4
    assert max(s.numel for s in p) * 4 <= 1_000_000 + 4 * 512


def test_the_default_cut_is_by_size_and_leaves_small_models_whole():
    """runtime.segments 0 (the default) cuts by runtime.segment_bytes: the configs' 4.8k-parameter
    MLP stays one message, the benchmarks' 4.35M-parameter one (17.4 MB) is cut in 4."""
    from qtrain.config import load_config
    from qtrain.config.schema import DEFAULT_SEGMENT_BYTES

    rt = load_config("configs/default.yaml", []).runtime
    assert (rt.segments, rt.segment_bytes) == (0, DEFAULT_SEGMENT_BYTES)
    assert len(Partition.build(4810, (512, 512), rt.segments, rt.segment_bytes)) == 1
    big = Partition.build(4_349_962, (512, 512), rt.segments, rt.segment_bytes)
    assert len(big) == -(-4_349_962 * 4 // DEFAULT_SEGMENT_BYTES) == 4
    assert len(Partition.build(10**10, (512,), 0, DEFAULT_SEGMENT_BYTES, servers=3)) == MAX_SEGMENTS // 3 * 3


@given(numel=st.integers(10_000, 2_000_000), size=st.integers(4096, 1 << 22), servers=st.integers(1, 8))
def test_a_cut_by_size_gives_every_serving_rank_as_many_segments(numel, size, servers):
    """Balance without tuning: the count a size gives is rounded up to a multiple of K, so every
    owner serves the same number of near-equal segments (the buckets permitting)."""
    p = Partition.build(numel, (64,), 0, size, servers=servers)
    wanted = -(-numel * 4 // size)
    if -(-numel // 64) >= -(-wanted // servers) * servers:
        assert len(p) % servers == 0 and len(p) >= wanted
        assert len({len(p.owned_by(k)) for k in range(servers)}) == 1
        shards = [p.shard(k).stop - p.shard(k).start for k in range(servers)]
        assert max(shards) - min(shards) <= 2 * 64  # a bucket, and the short one at the tail


def test_more_segments_than_buckets_gives_one_per_bucket():
    assert len(Partition.build(1000, (512,), 10)) == 2


def test_too_many_segments_are_refused():
    with pytest.raises(ValueError, match="at most"):
        Partition.build(10**7, (1,), MAX_SEGMENTS + 1)


@given(
    numel=st.integers(1, 50_000),
    bucket=st.sampled_from([0, 64, 512]),
    count=st.integers(1, 40),
    servers=st.integers(1, 9),
)
def test_each_serving_rank_owns_a_contiguous_near_equal_run_of_segments(numel, bucket, count, servers):
    """Issue 23 groundwork: K serving ranks own contiguous runs of segments (owner 0 the head of
    the flat vector), every owner at least one segment, run lengths within one segment; one
    serving rank keeps the cut and owners of before (all 0)."""
    units = -(-numel // (bucket or 1))
    if servers > units:
        with pytest.raises(ValueError, match=f"too few for {servers} serving ranks"):
            Partition.build(numel, (bucket,), count, servers=servers)
        return
    p = Partition.build(numel, (bucket,), count, servers=servers)
    flat = sorted(p, key=lambda s: s.start)
    owners = [s.owner for s in flat]
    assert owners == sorted(owners) and set(owners) == set(range(servers))
    runs = [len(p.owned_by(k)) for k in range(servers)]
    assert max(runs) - min(runs) <= 1 and sum(runs) == len(p) >= servers
    single = Partition.build(numel, (bucket,), count)
    if len(single) >= servers:  # enough segments already: the same cut, now with owners
        assert [(s.start, s.stop) for s in p] == [(s.start, s.stop) for s in single]
    assert all(s.owner == 0 for s in single)
