"""The lossless stage after quantization (codecs.entropy): exact round trips, what travels, the
checks before anything is decompressed, the kernel path and the config keys."""

import pytest
import torch
import zstandard
from codec_cases import BUCKET
from hypothesis import given, settings
from hypothesis import strategies as st

from qtrain.codecs import WireFormatError, get_codec, read_header, wire
from qtrain.codecs.entropy import EntropyCoded
from qtrain.codecs.philox import CounterStream
from qtrain.kernels import kernel_codec

INNER = [
    ("sign", {"bucket": BUCKET}),
    ("uniform", {"bits": 2, "norm": "l2", "bucket": BUCKET}),
    ("uniform", {"bits": 3, "norm": "linf", "bucket": 128, "rounding": "nearest"}),
    ("ternary", {"bucket": BUCKET}),
    ("threshold", {"bucket": BUCKET}),
    ("topk", {"k": 4, "bucket": BUCKET}),
    ("sparse", {}),
    ("none", {}),
]


def sparse_input(n: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * (torch.rand(n, generator=g) < density)


@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from(INNER),
    n=st.integers(0, 5000),
    density=st.sampled_from([0.0, 0.01, 0.2, 1.0]),
    seed=st.integers(0, 2**31),
    level=st.sampled_from([1, 3, 19]),
)
def test_the_stage_is_lossless_and_never_larger(case, n, density, seed, level):
    """expand(message) is exactly the inner codec's message (same bytes, same CRC), so every
    decoded float is the inner codec's; the message is never larger than the inner one."""
    name, params = case
    inner = get_codec(name, **params)
    coded = get_codec(name, **params, entropy="zstd", entropy_level=level)
    x = sparse_input(n, density, seed)
    raw, values = inner.quantize(x, CounterStream(seed))
    packed, coded_values = coded.quantize(x, CounterStream(seed))
    assert packed.numel() <= raw.numel() <= coded.wire_bytes(n)
    assert torch.equal(coded.expand(packed), raw)
    if values is not None:
        assert torch.equal(coded_values, values)
    assert torch.equal(coded.decode(packed), inner.decode(raw))
    acc = torch.ones(n)
    assert torch.equal(coded.decode_add_(packed, acc), inner.decode_add_(raw, torch.ones(n)))
    entropy_flag = bool(read_header(packed).flags & wire.FLAG_ENTROPY)
    assert entropy_flag == (packed.numel() < raw.numel())


def test_sparse_codes_compress_and_random_floats_travel_raw():
    x = sparse_input(1 << 16, 0.01, 3)
    coded = get_codec("uniform", bits=2, norm="l2", bucket=512, entropy="zstd")
    packed = coded.encode(x)
    raw = get_codec("uniform", bits=2, norm="l2", bucket=512).encode(x)
    assert read_header(packed).flags & wire.FLAG_ENTROPY
    assert packed.numel() * 4 < raw.numel()  # a 1% dense 2-bit code: far below 2 bits
    noise = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    plain = get_codec("sign", bucket=4096).encode(noise)  # random sign bits: incompressible
    assert torch.equal(get_codec("sign", bucket=4096, entropy="zstd").encode(noise), plain)


def test_encode_writes_into_a_caller_frame():
    coded = get_codec("sign", bucket=64, entropy="zstd")
    x = sparse_input(4096, 0.0, 1) + 1.0  # all positive: one sign value, very compressible
    frame = torch.full((coded.wire_bytes(4096) + 5,), 0xAB, dtype=torch.uint8)
    packed = coded.encode(x, out=frame)
    assert packed.data_ptr() == frame.data_ptr() and packed.numel() < 100
    assert torch.equal(coded.decode(packed), torch.ones(4096))
    with pytest.raises(ValueError, match="uint8 tensor"):
        coded.encode(x, out=torch.empty(10, dtype=torch.uint8))


def test_a_decoder_without_the_stage_names_it():
    x = sparse_input(4096, 0.01, 2)
    packed = get_codec("uniform", bits=2, norm="l2", entropy="zstd").encode(x)
    with pytest.raises(WireFormatError, match="entropy-coded.*entropy: zstd"):
        get_codec("uniform", bits=2, norm="l2").decode(packed)
    raw = get_codec("uniform", bits=2, norm="l2").encode(x)
    assert torch.equal(
        get_codec("uniform", bits=2, norm="l2", entropy="zstd").decode(raw),
        get_codec("uniform", bits=2, norm="l2").decode(raw),
    )  # a raw message is read as such


def forged(codec: EntropyCoded, numel: int, frame: bytes, flags: int = wire.FLAG_ENTROPY, aux: int = 1):
    body = torch.frombuffer(bytearray(frame), dtype=torch.uint8)
    return wire.assemble(
        codec.codec_id, codec.bits, flags, numel, codec.bucket, aux, [body], torch.device("cpu")
    )


def test_frames_that_do_not_hold_the_layout_are_refused_before_decompressing():
    coded = get_codec("uniform", bits=2, norm="l2", bucket=64, entropy="zstd")
    n = 1000
    need = coded.inner.wire_bytes(n) - wire.HEADER_SIZE
    good = zstandard.ZstdCompressor().compress(bytes(need))
    assert torch.equal(coded.decode(forged(coded, n, good)), torch.zeros(n))
    short = zstandard.ZstdCompressor().compress(bytes(need - 1))
    with pytest.raises(WireFormatError, match="frame holds"):
        coded.decode(forged(coded, n, short))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(need))
    with pytest.raises(WireFormatError, match="frame holds"):
        coded.decode(forged(coded, n, unsized))
    with pytest.raises(WireFormatError, match="not a Zstandard frame"):
        coded.decode(forged(coded, n, b"\x00" * 20))
    # 2^60 elements announced by a 17-byte frame: refused by arithmetic, nothing allocated
    with pytest.raises(WireFormatError, match="cannot hold"):
        coded.decode(forged(coded, 2**60, good))
    damaged = bytearray(good)
    damaged[-2] ^= 0xFF  # a CRC-valid message whose frame is damaged inside
    try:
        out = coded.decode(forged(coded, n, bytes(damaged)))
    except WireFormatError:
        return
    assert out.shape == (n,)


def test_kernel_path_gives_the_reference_bytes_and_sums():
    coded = get_codec("uniform", bits=2, norm="l2", bucket=64, entropy="zstd")
    fast = kernel_codec(coded, "cpu", "auto")
    if fast is None:
        pytest.skip("numba is not installed")
    p = sparse_input(10_000, 0.05, 4)
    e_ref, e_fast = torch.zeros(10_000), torch.zeros(10_000)
    ref, u = coded.quantize(p, CounterStream(7))
    e_ref.add_(p).sub_(u)
    packed, _ = fast.encode_ef(p, e_fast, 1.0, 1.0, CounterStream(7))
    assert torch.equal(packed, ref) and torch.equal(e_fast, e_ref)
    assert read_header(packed).flags & wire.FLAG_ENTROPY
    messages = [packed, coded.encode(sparse_input(10_000, 0.05, 5), CounterStream(8))]
    acc = torch.zeros(10_000)
    for m in messages:
        coded.decode_add_(m, acc)
    out = fast.decode_combine(messages, torch.empty(10_000), "mean")
    assert torch.equal(out, acc / 2)


def test_config_keys_build_the_stage_and_bad_values_name_the_key():
    from qtrain.algorithms.links import resolve_links
    from qtrain.config import load_config

    cfg = load_config(None, ["algorithm.name=ecq-sgd", "uplink.entropy=zstd", "uplink.entropy_level=5"])
    _, up, down = resolve_links(cfg)
    assert isinstance(up.codec, EntropyCoded) and up.codec.level == 5 and not up.codec.fixed_size
    assert not isinstance(down.codec, EntropyCoded)
    assert up.codec == get_codec(up.codec.name, **up.codec.params())
    with pytest.raises(ValueError, match="entropy must be one of zstd"):
        resolve_links(load_config(None, ["uplink.entropy=gzip"]))
    with pytest.raises(ValueError, match="entropy_level must be an integer in 1..19"):
        resolve_links(load_config(None, ["uplink.entropy=zstd", "uplink.entropy_level=40"]))
    with pytest.raises(ValueError, match="entropy_level=3 needs entropy"):
        resolve_links(load_config(None, ["downlink.entropy_level=3"]))
