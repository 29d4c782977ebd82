"""What a codec takes and gives at its bounds: an entropy-coded message is never inflated past the
documented decode bound (max(64 MiB, 64x the message) without ``out=``, the receiver's buffer
with it), and a float64 input beyond float32's range is named as such by every codec (issue 37)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import zstandard
from codec_cases import ALL_CASES, build, case_id

import qtrain
from qtrain.codecs import WireFormatError, get_codec, wire
from qtrain.codecs.base import UNBOUNDED_DECODE_BYTES
from qtrain.codecs.errors import NonFiniteInput, OutOfRangeInput

FLOAT32_MAX = torch.finfo(torch.float32).max


def zeros_frame(nbytes: int) -> bytes:
    """A Zstandard frame (with its content size) of ``nbytes`` zero bytes, compressed in pieces."""
    stream = zstandard.ZstdCompressor(level=1, write_content_size=True).compressobj(size=nbytes)
    piece = bytes(min(nbytes, 1 << 22))
    parts = [
        stream.compress(piece[: min(len(piece), nbytes - done)]) for done in range(0, nbytes, len(piece))
    ]
    return b"".join([*parts, stream.flush()])


def none_zstd_message(numel: int, frame: bytes | None = None) -> torch.Tensor:
    """A CRC-valid ``none``+zstd message announcing ``numel`` floats (zeros, unless ``frame``)."""
    frame = zeros_frame(4 * numel) if frame is None else frame
    body = torch.frombuffer(bytearray(frame), dtype=torch.uint8)
    return wire.assemble(
        wire.CODEC_IDS["none"], 32, wire.FLAG_ENTROPY, numel, 0, 0, [body], torch.device("cpu")
    )


class NoInflating:
    """A decompressor that fails the test if anything is decompressed."""

    def __getattr__(self, name):
        raise AssertionError(f"the frame was decompressed ({name}) before the message was refused")


CHILD = """
import resource, torch
from qtrain.codecs import get_codec
from test_codec_bounds import none_zstd_message
msg = none_zstd_message(1 << 27)  # 512 MiB of float32 zeros
codec = get_codec("none", entropy="zstd")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for call in (lambda: codec.decode(msg), lambda: codec.decode(msg, out=torch.empty(16))):
    try:
        call()
        print("decoded")
    except ValueError as exc:
        print(type(exc).__name__, exc)
print("message bytes", msg.numel())
print("peak growth KiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_small_message_announcing_512_mib_is_refused_before_anything_is_inflated():
    """The issue's case: a 16 KB none+zstd message of 2^27 zero floats decoded without ``out=`` to
    134,217,728 floats (1.4 GB more peak memory); with a 16-float ``out=`` it still inflated all
    512 MiB before refusing. Measured in a child process: the peak grows by less than 16 MiB."""
    here = Path(__file__).parent
    path = os.pathsep.join([str(Path(qtrain.__file__).parents[1]), str(here)])  # this qtrain, these tests
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        capture_output=True,
        text=True,
        cwd=here,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    size = int(lines[2].split()[-1])
    assert size < 17_000
    assert lines[0] == (
        f"WireFormatError none: a {size}-byte message announces 134217728 elements; decoding that many "
        "needs decode(packed, out=...) with a buffer of the size you expect"
    )
    assert (
        lines[1]
        == "WireFormatError none+zstd: the message announces 134217728 elements, the receiver expects 16"
    )
    assert int(lines[3].split()[-1]) < 16 * 1024


def test_the_bound_is_exact_and_every_decode_path_keeps_it(monkeypatch):
    """max(64 MiB, 64x the message) without ``out=``: 2^24 floats (64 MiB) decode, one more does
    not; a receiver's buffer of another size refuses the message on every path (decode,
    decode_add_, the public fast codec, the kernels' combine) without decompressing it."""
    codec = get_codec("none", entropy="zstd")
    at_bound = UNBOUNDED_DECODE_BYTES // 4
    assert torch.equal(codec.decode(none_zstd_message(at_bound)), torch.zeros(at_bound))
    over = none_zstd_message(at_bound + 1)
    assert 64 * over.numel() < UNBOUNDED_DECODE_BYTES
    monkeypatch.setattr(codec, "_decompressor", NoInflating())
    public = qtrain.get_codec("none", entropy="zstd")
    monkeypatch.setattr(public.reference, "_decompressor", NoInflating())
    unasked = f"a {over.numel()}-byte message announces {at_bound + 1} elements; decoding that many needs"
    for call in (lambda: codec.decode(over), lambda: public.decode(over)):
        with pytest.raises(WireFormatError, match=unasked):
            call()
    wrong = "none\\+zstd: the message announces 16777217 elements, the receiver expects 16777216"
    calls = [
        lambda: codec.decode(over, out=torch.empty(at_bound)),
        lambda: codec.decode_add_(over, torch.zeros(at_bound)),
        lambda: public.decode(over, out=torch.empty(at_bound)),
        lambda: public.decode_add_(over, torch.zeros(at_bound)),
    ]
    from qtrain.kernels import kernel_codec

    fast = kernel_codec(get_codec("uniform", bits=2, bucket=64, entropy="zstd"), "cpu", "auto")
    if fast is not None:  # the engines' path: each message expanded to the receiver's buffer only
        monkeypatch.setattr(fast.codec, "_decompressor", NoInflating())
        forged = get_codec("uniform", bits=2, bucket=64, entropy="zstd").encode(torch.zeros(1 << 16))
        assert wire.read_header(forged).flags & wire.FLAG_ENTROPY
        with pytest.raises(WireFormatError, match="announces 65536 elements, the receiver expects 65535"):
            fast.decode_combine([forged], torch.empty((1 << 16) - 1), "mean")
    for call in calls:
        with pytest.raises(WireFormatError, match=wrong):
            call()


@pytest.mark.parametrize("extra", [b"junk", None], ids=["junk", "a second frame"])
def test_a_frame_followed_by_anything_is_refused(extra):
    """The payload is one frame and nothing else: trailing bytes inside a CRC-valid message were
    silently ignored (a second frame too)."""
    frame = zeros_frame(4 * 1000)
    msg = none_zstd_message(1000, frame + (frame if extra is None else extra))
    with pytest.raises(WireFormatError, match="none\\+zstd: (damaged frame|the frame decompressed to more)"):
        get_codec("none", entropy="zstd").decode(msg)
    assert torch.equal(
        get_codec("none", entropy="zstd").decode(none_zstd_message(1000, frame)), torch.zeros(1000)
    )


def out_of_range_line(codec: str, largest: str) -> str:
    return (
        f"codec '{codec}': the input is finite but beyond float32's range (the largest |value| is "
        f"{largest} > 3.403e+38, float32's largest; the codecs compute in float32): scale it down"
    )


@pytest.mark.parametrize("public", [False, True], ids=["reference", "public"])
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_float64_beyond_float32s_range_is_named_by_every_codec(case, public):
    """A finite float64 input of 1e300 was "input has NaN or Inf" (sign, uniform, ternary,
    threshold, topk) or encoded silently as Inf (none, fp16, bf16, sparse)."""
    codec = qtrain.get_codec(case[0], **case[1]) if public else build(case)
    x = torch.full((200,), 0.5, dtype=torch.float64)
    x[3], x[150] = 1e300, -3e305
    with pytest.raises(OutOfRangeInput) as info:
        codec.encode(x)
    assert str(info.value) == out_of_range_line(case[0], "3e+305")
    assert isinstance(info.value, NonFiniteInput)  # the engines' handler names it as out of range
    x[3], x[150] = 1e18, -1e18  # float64 inside float32's range still encodes
    assert codec.decode(codec.encode(x)).shape == (200,)


def test_a_real_nan_in_float64_is_still_nan_and_the_engines_say_out_of_range():
    """A NaN beside 1e300 is still the quantizers' NaN message once nothing overflows; the
    engines turn OutOfRangeInput into "finite but overflows float32" like any NonFiniteInput."""
    from qtrain.engine.divergence import OutOfRange, non_finite_encode

    x = torch.zeros(64, dtype=torch.float64)
    x[5] = float("nan")
    with pytest.raises(NonFiniteInput, match="codec 'sign': input has NaN or Inf in bucket 0") as info:
        get_codec("sign", bucket=64).encode(x)
    assert not isinstance(info.value, OutOfRangeInput)
    x[5] = 1e300
    with pytest.raises(OutOfRangeInput) as info:
        get_codec("sign", bucket=64).encode(x)
    error = non_finite_encode(3, "sign", "worker 0's uplink input", info.value, x)
    assert isinstance(error, OutOfRange) and "is finite but overflows float32 in codec 'sign'" in str(error)
    edge = torch.tensor([FLOAT32_MAX * (1 + 2.0**-25)], dtype=torch.float64)  # rounds to float32's largest
    assert get_codec("none").decode(get_codec("none").encode(edge)).item() == FLOAT32_MAX
