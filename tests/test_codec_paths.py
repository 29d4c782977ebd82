"""The codec paths the engines use: quantize (message + Q(x) without decoding), encode into a
caller-owned frame, and decode_add_ (accumulate without materialising the message). Each must
agree with the plain encode/decode reference bit for bit, on every codec and ragged size."""

import pytest
import torch
from codec_cases import ALL_CASES, BUCKET, SIZES, build, case_id
from hypothesis import given
from hypothesis import strategies as st

from qtrain.codecs import HEADER_SIZE, WireFormatError
from qtrain.codecs.base import CHUNK_ELEMENTS
from qtrain.codecs.philox import CounterStream


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as bit patterns (tells -0.0 from +0.0, and compares NaNs)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def sample(n: int, seed: int, kind: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    if kind == 1:
        x = x**3
    elif kind == 2:
        x[torch.rand(n, generator=g) < 0.8] = 0
        x[torch.rand(n, generator=g) < 0.1] = -0.0
    return x


def check_paths(codec, x: torch.Tensor, seed: int) -> None:
    reference = codec.encode(x, rng=CounterStream(seed))
    packed, values = codec.quantize(x, rng=CounterStream(seed))
    assert torch.equal(packed, reference), "quantize sends the bytes encode sends"
    assert same_bits(values, codec.decode(reference)), "Q(x) is what the receiver decodes"
    frame = torch.full((8 + codec.wire_bytes(x.numel()) + 5,), 0xAB, dtype=torch.uint8)
    written = codec.encode(x, rng=CounterStream(seed), out=frame[8:])
    assert written.data_ptr() == frame[8:].data_ptr(), "encoded in place"
    assert torch.equal(written, reference)
    assert int(frame[:8].eq(0xAB).sum()) == 8, "nothing written before the slot"
    acc = sample(x.numel(), seed + 1)
    expected = acc + codec.decode(reference)
    assert codec.decode_add_(reference, acc) is acc
    assert same_bits(acc, expected), "decode_add_ adds exactly the decoded message"


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
@pytest.mark.parametrize("n", SIZES)
def test_every_path_agrees_with_encode_and_decode(case, n):
    codec = build(case)
    for kind in range(3):
        check_paths(codec, sample(n, n + kind, kind), seed=kind)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_decode_add_across_many_chunks(case):
    """Messages several chunks long, with a ragged tail: the chunked accumulation is exact."""
    codec = build(case)
    check_paths(codec, sample(3 * CHUNK_ELEMENTS + BUCKET + 5, 7, 1), seed=3)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_wire_bytes_is_the_declared_layout(case):
    codec = build(case)
    for n in SIZES:
        flags, aux = codec.largest_header(n)
        declared = sum(s.nbytes for s in codec.sections(n, flags, aux))
        assert codec.wire_bytes(n) == HEADER_SIZE + declared


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_decode_add_rejects_what_decode_rejects(case):
    codec = build(case)
    packed = codec.encode(sample(200, 1), rng=CounterStream(0))
    for bad in (
        packed[:-1],
        torch.cat([packed, packed[:1]]),
        packed.clone().index_fill_(0, torch.tensor([45]), 7),
    ):
        with pytest.raises(WireFormatError):
            codec.decode(bad)
        with pytest.raises(WireFormatError):
            codec.decode_add_(bad, torch.zeros(200))


def test_encode_into_a_frame_that_is_too_small_is_refused():
    codec = build(("sign", {"bucket": BUCKET}))
    with pytest.raises(ValueError, match="encode\\(out=...\\) needs"):
        codec.encode(torch.ones(100), out=torch.empty(10, dtype=torch.uint8))


@given(
    case=st.sampled_from(ALL_CASES),
    values=st.lists(st.floats(-1e6, 1e6, width=32), max_size=3 * BUCKET + 9),
    seed=st.integers(0, 2**31),
)
def test_paths_agree_on_arbitrary_inputs(case, values, seed):
    check_paths(build(case), torch.tensor(values, dtype=torch.float32), seed)
