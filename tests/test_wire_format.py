import json
import struct
import zlib
from pathlib import Path

import crc32c
import pytest
import torch
from codec_cases import ALL_CASES, build, case_id
from hypothesis import given
from hypothesis import strategies as st

from qtrain.codecs import HEADER_SIZE, WireFormatError, get_codec, read_header
from qtrain.codecs.philox import CounterStream
from qtrain.codecs.wire import CODEC_IDS, FLAG_ENTROPY, assemble

GOLDEN = json.loads((Path(__file__).parent / "golden" / "codecs.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: c["codec"] + json.dumps(c["params"]))
def test_golden_bytes(case):
    """A format change (layout, header, rounding) changes these bytes: bump the version then."""
    codec = get_codec(case["codec"], **case["params"])
    rng = CounterStream(case["seed"]) if case["seed"] is not None else None
    packed = codec.encode(torch.tensor(case["input"]), rng=rng)
    assert bytes(packed.numpy()).hex() == case["hex"]
    golden = torch.frombuffer(bytearray.fromhex(case["hex"]), dtype=torch.uint8)
    assert codec.decode(golden).tolist() == case["decoded"]


def test_header_layout_worked_example():
    """The example of docs/wire-format.md: sign codec, bucket 8, 13 elements."""
    case = next(c for c in GOLDEN if c["codec"] == "sign")
    raw = bytes.fromhex(case["hex"])
    magic, ver, cid, bits, flags, n, bucket, aux, plen, reserved, crc = struct.unpack(
        "<4sBBBBQIIQII", raw[:40]
    )
    assert (magic, ver, cid, bits, flags, n, bucket, aux, reserved) == (b"QTRN", 3, 3, 1, 0, 13, 8, 0, 0)
    assert plen == len(raw) - 40 == 2 * 4 + 2  # two fp32 scales, 13 sign bits in 2 bytes
    assert crc == crc32c.crc32c(raw[:36] + raw[40:]) == 0x3872C5B6  # CRC-32C since version 2
    assert crc != zlib.crc32(raw[:36] + raw[40:])
    scales = struct.unpack("<2f", raw[40:48])
    expected = (sum(abs(v) for v in case["input"][:8]) / 8, sum(abs(v) for v in case["input"][8:]) / 5)
    assert scales == struct.unpack("<2f", struct.pack("<2f", *expected))  # fp32-rounded means
    h = read_header(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    assert (h.codec_name, h.numel, h.bucket, h.payload_len) == ("sign", 13, 8, 10)


def real_messages():
    out = []
    g = torch.Generator().manual_seed(5)
    for case in ALL_CASES:
        codec = build(case)
        for n in (0, 1, 100, 300):
            x = torch.randn(n, generator=g)
            out.append((codec, codec.encode(x, rng=CounterStream(5))))
        if "entropy" in case[1]:  # mostly zeros and a few ones: the Zstandard frame is what travels
            x = (torch.rand(2000, generator=g) < 0.1).float()
            out.append((codec, codec.encode(x, rng=CounterStream(5))))
            assert read_header(out[-1][1]).flags & FLAG_ENTROPY, case
    return out


MESSAGES = real_messages()


def assert_rejected_or_original(codec, corrupted, original):
    try:
        codec.decode(corrupted)
    except WireFormatError:
        return
    # the only message allowed to decode is one identical to what the encoder produced
    assert torch.equal(corrupted, original)


@given(st.binary(max_size=300), st.sampled_from(ALL_CASES))
def test_random_bytes_are_rejected(data, case):
    packed = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    )
    with pytest.raises(WireFormatError):
        build(case).decode(packed)


@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_truncated_messages_are_rejected(i, data):
    codec, packed = MESSAGES[i]
    cut = data.draw(st.integers(0, packed.numel() - 1))
    with pytest.raises(WireFormatError):
        codec.decode(packed[:cut].clone())


@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_bit_flips_anywhere_are_caught(i, data):
    codec, packed = MESSAGES[i]
    pos = data.draw(st.integers(0, packed.numel() * 8 - 1))
    flipped = packed.clone()
    flipped[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(WireFormatError):
        codec.decode(flipped)


@given(st.sampled_from(range(len(MESSAGES))), st.binary(min_size=1, max_size=8))
def test_appended_bytes_are_rejected(i, extra):
    codec, packed = MESSAGES[i]
    longer = torch.cat([packed, torch.frombuffer(bytearray(extra), dtype=torch.uint8)])
    with pytest.raises(WireFormatError, match="trailing"):
        codec.decode(longer)


@given(
    case=st.sampled_from(ALL_CASES),
    bits=st.integers(0, 255),
    flags=st.integers(0, 7),
    numel=st.one_of(st.integers(0, 400), st.integers(0, 2**64 - 1)),
    aux=st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)),
    payload=st.binary(max_size=600),
    same_bucket=st.booleans(),
    bucket=st.integers(0, 2**32 - 1),
)
def test_crc_valid_but_inconsistent_messages_never_crash(
    case, bits, flags, numel, aux, payload, same_bucket, bucket
):
    """Messages with a correct CRC but arbitrary header fields: the validation behind the CRC
    must reject inconsistencies with WireFormatError, never an IndexError or a wrong shape."""
    codec = build(case)
    body = (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if payload
        else torch.zeros(0, dtype=torch.uint8)
    )
    msg = assemble(
        CODEC_IDS[codec.name],
        bits,
        flags,
        numel,
        codec.bucket if same_bucket else bucket,
        aux,
        [body],
        torch.device("cpu"),
    )
    try:
        y = codec.decode(msg)
    except WireFormatError:
        return
    assert y.shape == (numel,) and y.dtype == torch.float32


# the l2-scaled uniform grid is not a fixed point: re-encoding rescales by ||Q(x)||_2 != ||x||_2
IDEMPOTENT = [c for c in ALL_CASES if c[1].get("norm") != "l2"]


@pytest.mark.parametrize("case", IDEMPOTENT, ids=case_id)
def test_valid_messages_survive_a_decode_encode_cycle_where_the_codec_is_idempotent(case):
    """Decoding, then re-encoding the decoded values, gives the same bytes for codecs whose
    decoded output is a fixed point (exact codecs, sign, topk, threshold, linf uniform)."""
    codec = build(case)
    x = torch.randn(300, generator=torch.Generator().manual_seed(9))
    packed = codec.encode(x, rng=CounterStream(1))
    y = codec.decode(packed)
    again = codec.encode(y, rng=CounterStream(1))
    if codec.name in ("none", "fp16", "bf16", "sparse", "topk"):
        assert torch.equal(again, packed)
    # every codec: decoding the re-encoded message reproduces the values to float rounding
    assert torch.allclose(codec.decode(again), y, rtol=1e-5, atol=1e-6)


def test_read_header_rejects_non_tensors_and_wrong_dtypes():
    with pytest.raises(WireFormatError, match="torch.Tensor"):
        read_header(b"QTRN")
    with pytest.raises(WireFormatError, match="1-D uint8"):
        read_header(torch.zeros(50))
    with pytest.raises(WireFormatError, match="shorter than the 40-byte header"):
        read_header(torch.zeros(10, dtype=torch.uint8))
    assert HEADER_SIZE == 40


@pytest.mark.parametrize("numel", [2**31, 2**48 + 1, 2**64 - 1])
def test_element_counts_beyond_what_the_payload_holds_are_refused_before_allocating(numel):
    """A valid CRC over a 40-byte sparse message that announces 2^31 elements once made the decoder
    allocate and zero 8 GiB; 2^64 - 1 raised TypeError."""
    codec = get_codec("sparse")
    empty = assemble(CODEC_IDS["sparse"], 32, 1, numel, 0, 0, [], torch.device("cpu"))
    with pytest.raises(WireFormatError, match="elements"):
        codec.decode(empty)
    small = assemble(CODEC_IDS["sparse"], 32, 1, 1000, 0, 0, [], torch.device("cpu"))
    assert torch.equal(codec.decode(small), torch.zeros(1000))  # an all-zero model is a valid message
    big = assemble(CODEC_IDS["sparse"], 32, 1, 2 * 10**7, 0, 0, [], torch.device("cpu"))
    out = torch.ones(2 * 10**7)
    assert not codec.decode(big, out=out).any()  # with the buffer the caller expects: decoded


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_a_message_in_a_non_contiguous_tensor_is_decoded(case):
    codec = build(case)
    packed = codec.encode(torch.randn(300, generator=torch.Generator().manual_seed(3)), rng=CounterStream(2))
    spread = torch.zeros(2 * packed.numel(), dtype=torch.uint8)
    spread[::2] = packed
    assert not spread[::2].is_contiguous()
    assert torch.equal(codec.decode(spread[::2]), codec.decode(packed))
    acc = torch.zeros(300)
    assert torch.equal(codec.decode_add_(spread[::2], acc), codec.decode(packed))
