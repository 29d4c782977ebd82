"""``qtrain.get_codec``: the public codec API on the compiled kernels gives the torch reference's
bytes and floats for every codec (kernel or not), every input dtype and size, with and without
``out=``, and refuses bad messages and buffers with the reference's own errors."""

import pickle
import re

import pytest
import torch
from codec_cases import ALL_CASES, SIZES, case_id, wide_range_floats
from hypothesis import given, settings
from hypothesis import strategies as st

import qtrain
from qtrain.codecs import Codec, CounterStream, WireFormatError
from qtrain.codecs import get_codec as reference_codec

pytest.importorskip("numba")

KERNEL_CODECS = {"sign", "uniform", "ternary", "threshold"}  # under auto; the float codecs: torch's own
FLOAT_CODECS = {"none", "fp16", "bf16"}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte-for-byte equality (NaN patterns and signed zeros included)."""
    return a.dtype == b.dtype and a.shape == b.shape and bytes(a.contiguous().numpy()) == bytes(b.numpy())


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_the_public_codec_equals_the_reference(case):
    name, params = case
    kernels = "numba" if name in FLOAT_CODECS else "auto"  # auto leaves them to torch: test the kernel
    fast, ref = qtrain.get_codec(name, kernels=kernels, **params), reference_codec(name, **params)
    assert fast.path("cpu") == ("numba" if name in KERNEL_CODECS | FLOAT_CODECS else "torch")
    assert qtrain.get_codec(name, **params).path("cpu") == ("numba" if name in KERNEL_CODECS else "torch")
    assert (fast.name, fast.bits, fast.params()) == (ref.name, ref.bits, ref.params())
    for n in SIZES:
        x = wide_range_floats(n, n + 5, zeros=0.5 if name in ("threshold", "sparse") else 0.0)
        rng = CounterStream(key=3, step=n, offset=11)
        want = ref.encode(x, rng)
        assert same(fast.encode(x, rng), want), n
        frame = torch.full((max(fast.wire_bytes(n), want.numel()) + 5,), 0xAB, dtype=torch.uint8)
        got = fast.encode(x, rng, out=frame)
        assert same(got, want) and got.data_ptr() == frame.data_ptr()  # written into the frame
        exact = torch.empty(want.numel(), dtype=torch.uint8)  # the message's own size: both take it,
        try:  # or, where compress needs room for the uncompressed message, both refuse it
            ref.encode(x, rng, out=exact.clone())
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                fast.encode(x, rng, out=exact)
        else:
            assert same(fast.encode(x, rng, out=exact), want)
        got_msg, got_q = fast.quantize(x, rng)
        want_msg, want_q = ref.quantize(x, rng)
        assert same(got_msg, want_msg) and same(got_q, want_q.contiguous())
        assert same(fast.decode(want), ref.decode(want))
        out = torch.full((n,), float("nan"))
        assert fast.decode(want, out=out) is out and same(out, ref.decode(want))
        acc = wide_range_floats(n, n + 9)
        acc[::5] = -0.0
        want_acc = ref.decode_add_(want, acc.clone())
        got_acc = acc.clone()
        assert fast.decode_add_(want, got_acc) is got_acc and same(got_acc, want_acc)


def test_any_float_input_is_encoded_as_its_float32_values():
    fast, ref = qtrain.get_codec("uniform", bits=3), reference_codec("uniform", bits=3)
    x = torch.randn(3000, dtype=torch.float64)
    for v in (x, x.half(), x.bfloat16(), x.float()[::2]):
        assert same(fast.encode(v), ref.encode(v))


def test_the_reference_stays_reachable_by_name():
    ref = qtrain.get_codec("sign", kernels="torch")
    assert isinstance(ref, Codec) and type(ref) is type(reference_codec("sign"))
    fast = qtrain.get_codec("sign")
    assert isinstance(fast.reference, Codec) and fast.kernels == "auto"
    with pytest.raises(ValueError, match="kernels must be one of"):
        qtrain.get_codec("sign", kernels="cuda")
    with pytest.raises(ValueError, match="unknown codec 'sgn'"):
        qtrain.get_codec("sgn")
    with pytest.raises(ValueError, match="runtime.kernels=triton runs on CUDA"):
        qtrain.get_codec("sign", kernels="triton").encode(torch.ones(4))
    fast.encode(torch.arange(9.0))  # its kernel codec is built now: the pickle leaves it out
    restored = pickle.loads(pickle.dumps(fast))
    assert not restored._paths and restored == fast and restored.kernels == "auto"
    assert same(restored.encode(torch.arange(9.0)), fast.encode(torch.arange(9.0)))


def test_bad_messages_and_buffers_get_the_references_errors():
    fast, ref = qtrain.get_codec("uniform", bits=2, bucket=8), reference_codec("uniform", bits=2, bucket=8)
    good = ref.encode(torch.randn(100))
    flipped = good.clone()
    flipped[-1] ^= 1
    other = reference_codec("sign", bucket=8).encode(torch.randn(100))

    def error(call):
        with pytest.raises((WireFormatError, ValueError)) as info:
            call()
        return type(info.value), str(info.value)

    for msg in (flipped, other, good[:10], good[:-1]):
        assert error(lambda m=msg: fast.decode(m)) == error(lambda m=msg: ref.decode(m))
        acc = torch.zeros(100)
        got = error(lambda m=msg, a=acc: fast.decode_add_(m, a))
        assert got == error(lambda m=msg, a=acc: ref.decode_add_(m, a))
    for buf in (torch.zeros(99), torch.zeros(100, dtype=torch.float64), torch.zeros(100, 1)):
        assert error(lambda b=buf: fast.decode(good, out=b)) == error(lambda b=buf: ref.decode(good, out=b))
        assert error(lambda b=buf: fast.decode_add_(good, b)) == error(lambda b=buf: ref.decode_add_(good, b))
    bad = torch.randn(100)
    bad[20] = float("inf")
    assert error(lambda: fast.encode(bad)) == error(lambda: ref.encode(bad))
    assert error(lambda: fast.encode(bad, out=torch.empty(3, dtype=torch.uint8)))[0] is ValueError


def test_what_the_reference_takes_the_public_codec_takes():
    """Inputs the kernels cannot take (a deterministic codec's ignored rng, a frame on another
    device) and inputs both must refuse (a non-tensor message, a float frame)."""
    x = torch.randn(500)
    for name, params in (("sign", {}), ("threshold", {"layout": "sparse"}), ("uniform", {"entropy": "zstd"})):
        fast, ref = qtrain.get_codec(name, **params), reference_codec(name, **params)
        if not ref.stochastic:
            assert same(fast.encode(x, rng=7), ref.encode(x, rng=7))
        for bad in (b"abc", None):
            with pytest.raises(WireFormatError) as want:
                ref.decode(bad)
            with pytest.raises(WireFormatError, match=re.escape(str(want.value))):
                fast.decode(bad)
        with pytest.raises(ValueError) as want:
            ref.encode(x, out=torch.empty(4000))
        with pytest.raises(ValueError, match=re.escape(str(want.value))):
            fast.encode(x, out=torch.empty(4000))
    assert qtrain.get_codec("sign", bucket=4) == reference_codec("sign", bucket=4)
    assert hash(qtrain.get_codec("sign", bucket=4)) == hash(reference_codec("sign", bucket=4))
    assert qtrain.get_codec("sign", bucket=4) != qtrain.get_codec("sign", bucket=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA device")
def test_a_gradient_on_the_gpu_encodes_into_a_host_frame():
    fast, ref = qtrain.get_codec("sign"), reference_codec("sign")
    x = torch.randn(10_000, device="cuda")
    frame = torch.empty(ref.wire_bytes(x.numel()), dtype=torch.uint8)
    assert same(fast.encode(x, out=frame), ref.encode(x).cpu())
    out = torch.empty(x.numel(), device="cuda")
    assert torch.equal(fast.decode(frame, out=out).cpu(), ref.decode(frame))


def test_a_strided_buffer_is_decoded_into_in_place():
    fast, ref = qtrain.get_codec("sign", bucket=16), reference_codec("sign", bucket=16)
    msg = ref.encode(torch.randn(50))
    buf = torch.zeros(100)
    fast.decode_add_(msg, buf[::2])
    assert same(buf[::2].contiguous(), ref.decode(msg)) and not buf[1::2].any()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=200),
    case=st.sampled_from([c for c in ALL_CASES if c[0] in KERNEL_CODECS | FLOAT_CODECS]),
    step=st.integers(0, 2**40),
)
def test_property_public_codec_equals_reference(values, case, step):
    name, params = case
    fast, ref = qtrain.get_codec(name, kernels="numba", **params), reference_codec(name, **params)
    x = torch.tensor(values, dtype=torch.float32)
    rng = CounterStream(1, step)
    try:
        want = ref.encode(x, rng)
    except ValueError:  # a bucket's sum overflowed: both refuse
        with pytest.raises(ValueError, match="NaN or Inf"):
            fast.encode(x, rng)
        return
    assert same(fast.encode(x, rng), want)
    acc = torch.flip(x, [0])
    assert same(fast.decode_add_(want, acc.clone()), ref.decode_add_(want, acc.clone()))
