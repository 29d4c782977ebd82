"""The codec interface and the helpers every codec shares (input checks, buckets, the templates of
encoding, quantizing, decoding and decode-accumulating)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qtrain.codecs import wire
from qtrain.codecs.errors import NonFiniteInput, OutOfRangeInput, WireFormatError
from qtrain.codecs.layout import Section, chunkable, payload_bytes
from qtrain.codecs.philox import CounterStream

DEFAULT_STREAM = CounterStream(key=0)

CHUNK_ELEMENTS = 1 << 16  # decode_add_ works through dense messages in pieces of about this size
MAX_NUMEL = 1 << 48  # no message announces more elements (2^48 float32 = 1 PiB)
# decode() without out= allocates what the header announces: at most this many bytes, or 64 times
# the message's own size (a dense message's payload already proves its element count; a sparse
# one's does not). Beyond that, the caller passes the buffer it expects (the engines always do).
UNBOUNDED_DECODE_BYTES = 1 << 26
FLOAT32_MAX = torch.finfo(torch.float32).max


@dataclass
class Quantized:
    """What a codec's ``_quantize`` produces: the header's flags and aux, one array per section of
    ``sections(numel, flags, aux)`` (in order), and, when asked for, Q(x) as float32."""

    flags: int
    aux: int
    arrays: list[torch.Tensor]
    values: torch.Tensor | None = None


class Codec:
    """Turns a 1-D float tensor into one contiguous ``uint8`` message and back.

    A subclass sets ``name`` and ``bits`` and states three things:

    - ``sections(numel, flags, aux)``: the payload layout of a message with that header (it raises
      :class:`WireFormatError` for flags or aux this codec never writes); ``wire_bytes`` and the
      decoder's reader both follow it;
    - ``_quantize(x, rng, want_values)``: the arrays of those sections, and Q(x) itself when
      ``want_values`` (error feedback uses it, so it never decodes its own message);
    - ``_dequantize(numel, flags, aux, arrays, out)``: Q(x) written into ``out``.

    ``fixed_size`` is True when ``wire_bytes(n)`` is the exact message size for every input
    (dense codecs); for variable-size codecs it is an upper bound (``largest_header``).
    ``stochastic`` codecs draw from the :class:`~qtrain.codecs.philox.CounterStream` passed to
    :meth:`encode` (``DEFAULT_STREAM`` when none is given: the same draws on every call).

    Sums over a bucket (the sign scale, the l2 norm, the threshold's mean) are :func:`bucket_sums`:
    a fixed pairwise tree, so that the compiled kernels reproduce them bit for bit.
    """

    name: str = ""
    bits: int = 32
    bucket: int = 0
    fixed_size: bool = True
    stochastic: bool = False

    @property
    def codec_id(self) -> int:
        return wire.CODEC_IDS[self.name]

    def params(self) -> dict[str, Any]:
        """The parameters that define this codec (what `get_codec(name, **params)` takes)."""
        return {}

    def delta(self) -> float | None:
        """Documented contraction factor of a deterministic codec: ||Q(x)-x|| <= delta*||x||.

        ``None`` for stochastic codecs, which are unbiased instead.
        """
        return None

    # ------------------------------------------------------------------ layout
    def sections(self, numel: int, flags: int, aux: int) -> list[Section]:
        raise NotImplementedError

    def largest_header(self, numel: int) -> tuple[int, int]:
        """(flags, aux) of the largest message for ``numel`` elements."""
        return 0, 0

    def wire_bytes(self, numel: int) -> int:
        """The message size for ``numel`` elements (the upper bound for variable-size codecs)."""
        return wire.HEADER_SIZE + payload_bytes(self.sections(numel, *self.largest_header(numel)))

    # ------------------------------------------------------------------ encoding
    def encode(
        self, x: torch.Tensor, rng: CounterStream | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode a 1-D float tensor (any float dtype, any device) into a uint8 message.

        With ``out`` (a 1-D uint8 tensor of at least ``wire_bytes(x.numel())`` bytes, e.g. the
        transport's send frame) the message is written there and a view of it is returned."""
        return self.quantize(x, rng, out, want_values=False)[0]

    def quantize(
        self,
        x: torch.Tensor,
        rng: CounterStream | None = None,
        out: torch.Tensor | None = None,
        want_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(message, Q(x)): the message of :meth:`encode` and the float32 values a receiver decodes
        from it, bit for bit, computed from the encoder's own intermediates (Q(x) may share
        memory with ``x`` for lossless codecs)."""
        x = as_flat_float(x, self.name)
        q = self._quantize(x, rng or DEFAULT_STREAM, want_values)
        layout = self.sections(x.numel(), q.flags, q.aux)
        _check_arrays(self.name, layout, q.arrays)
        size = wire.HEADER_SIZE + payload_bytes(layout)
        if out is None:
            out = torch.empty(size, dtype=torch.uint8, device=x.device)
        else:
            check_frame(self.name, out, size)
        header = (self.codec_id, self.bits, q.flags, x.numel(), self.bucket, q.aux)
        return wire.write_message(out[:size], *header, q.arrays), q.values

    def _quantize(self, x: torch.Tensor, rng: CounterStream, want_values: bool) -> Quantized:
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding
    def _read(self, packed: torch.Tensor) -> tuple[wire.Header, dict[str, torch.Tensor], list[Section]]:
        """Validate the header against this codec, cut the payload into its sections."""
        header = wire.read_header(packed)
        if header.numel > MAX_NUMEL:
            raise WireFormatError(f"{self.name}: message announces {header.numel} elements, more than 2^48")
        if not packed.is_contiguous():  # e.g. buf[::2]: its sections are read from a compact copy
            packed = packed.contiguous()
        if header.codec_id != self.codec_id:
            raise WireFormatError(
                f"message was encoded by codec '{header.codec_name}', this decoder is '{self.name}'"
            )
        if header.bucket != self.bucket:
            raise WireFormatError(
                f"{self.name}: message has bucket size {header.bucket}, this codec uses {self.bucket}"
            )
        if header.bits != self.bits:
            raise WireFormatError(f"{self.name}: message has {header.bits} bits, this codec uses {self.bits}")
        if header.flags & wire.FLAG_ENTROPY:
            raise WireFormatError(
                f"{self.name}: the message is entropy-coded (zstd) and this decoder has no entropy stage "
                "(the receiving link needs entropy: zstd)"
            )
        layout = self.sections(header.numel, header.flags, header.aux)
        return header, wire.read_sections(packed, header, layout), layout

    def decode(self, packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Validate and decode a message into a float32 tensor on the message's device.

        With ``out`` (a 1-D float32 tensor of the right length), the result is written there
        directly. Raises :class:`WireFormatError` on any malformed, corrupted or mismatched message.
        """
        header, arrays, _ = self._read(packed)
        n = header.numel
        if out is None:
            check_decodes_unasked(self.name, n, packed)
            out = torch.empty(n, dtype=torch.float32, device=packed.device)
        elif out.dim() != 1 or out.numel() != n or out.dtype != torch.float32:
            raise ValueError(
                f"decode(out=...) needs a 1-D float32 tensor of {n} elements, "
                f"got {tuple(out.shape)} {out.dtype}"
            )
        self._dequantize(n, header.flags, header.aux, arrays, out)
        return out

    def decode_add_(self, packed: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """``acc += decode(packed)`` (bit for bit the same sum), without materialising the decoded
        message: dense layouts are worked through in bucket-aligned chunks of about
        ``CHUNK_ELEMENTS`` elements, sparse ones are scattered in. A malformed message raises
        :class:`WireFormatError`, possibly after some chunks were added: treat it as fatal."""
        header, arrays, layout = self._read(packed)
        n = header.numel
        if acc.dim() != 1 or acc.numel() != n or acc.dtype != torch.float32:
            raise ValueError(
                f"decode_add_ needs a 1-D float32 accumulator of {n} elements, "
                f"got {tuple(acc.shape)} {acc.dtype}"
            )
        self._accumulate(n, header.flags, header.aux, arrays, layout, acc)
        return acc

    def _accumulate(self, n, flags, aux, arrays, layout, acc) -> None:
        if not chunkable(layout):
            raise NotImplementedError(f"{self.name}: a message-sized section needs its own _accumulate")
        step = _chunk_size(self.bucket)
        scratch = torch.empty(min(step, n), dtype=torch.float32, device=acc.device)
        for start in range(0, n, step):
            stop = min(start + step, n)
            part = {}
            for s in layout:
                lo, hi = s.items(start, stop, self.bucket)
                part[s.name] = arrays[s.name][lo:hi]
            values = scratch[: stop - start]
            self._dequantize(stop - start, flags, aux, part, values)
            acc[start:stop].add_(values)

    def _dequantize(self, numel: int, flags: int, aux: int, arrays: dict, out: torch.Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and (self.name, self.params()) == (other.name, other.params())

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params().items()))))


def _chunk_size(bucket: int) -> int:
    """A multiple of 8 elements (whole bytes of packed codes) and of the bucket, about CHUNK_ELEMENTS."""
    unit = math.lcm(8, bucket or 1)
    return max(unit, CHUNK_ELEMENTS // unit * unit)


def _check_arrays(codec: str, layout: list[Section], arrays: list[torch.Tensor]) -> None:
    """The encoder produced exactly the sections its layout declares (a bug here is the codec's)."""
    got = [(a.dtype, a.numel()) for a in arrays]
    want = [(s.dtype, s.count) for s in layout]
    if got != want:
        raise AssertionError(f"codec '{codec}' produced sections {got}, its layout declares {want}")


def check_frame(name: str, out: torch.Tensor, size: int) -> None:
    """``out`` can take a ``size``-byte message of codec ``name`` (``encode(out=...)``): a
    contiguous 1-D uint8 tensor of at least that many bytes; else ValueError."""
    if out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < size or not out.is_contiguous():
        raise ValueError(f"{name}: encode(out=...) needs a contiguous 1-D uint8 tensor of >= {size} bytes")


def decodes_unasked(numel: int, packed: torch.Tensor) -> bool:
    """Whether ``decode(packed)`` without ``out=`` may allocate the ``numel`` floats its header
    announces (``UNBOUNDED_DECODE_BYTES``). ``packed`` is the message as it travelled: for an
    entropy-coded one, the compressed message, so that its frame is never inflated past the bound."""
    return 4 * numel <= max(UNBOUNDED_DECODE_BYTES, 64 * packed.numel())


def check_decodes_unasked(codec: str, numel: int, packed: torch.Tensor) -> None:
    """:func:`decodes_unasked`, or the ``WireFormatError`` that says to pass the expected buffer."""
    if not decodes_unasked(numel, packed):
        raise WireFormatError(
            f"{codec}: a {packed.numel()}-byte message announces {numel} elements; decoding "
            "that many needs decode(packed, out=...) with a buffer of the size you expect"
        )


def as_flat_float(x: torch.Tensor, codec: str) -> torch.Tensor:
    """Check the encoder input and return it as a contiguous 1-D float32 tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"codec '{codec}' encodes a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"codec '{codec}' encodes 1-D tensors, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"codec '{codec}' encodes floating-point tensors, got {x.dtype}")
    flat = x.to(torch.float32).contiguous()
    if torch.finfo(x.dtype).max > FLOAT32_MAX and flat.numel():
        check_float32_range(x, flat, codec)
    return flat


def check_float32_range(x: torch.Tensor, flat: torch.Tensor, codec: str) -> None:
    """A wider input (float64) whose finite values float32 cannot hold: every codec computes in
    float32, where they would become Inf (sent as Inf by the float codecs, called "NaN or Inf" by
    the quantizers). ``OutOfRangeInput``, naming the largest |value|, instead."""
    if bool(torch.isfinite(flat).all()):
        return
    overflowed = torch.isinf(flat) & torch.isfinite(x)
    if bool(overflowed.any()):
        largest = float(x[overflowed].abs().max())
        raise OutOfRangeInput(
            f"codec '{codec}': the input is finite but beyond float32's range (the largest |value| is "
            f"{largest:.4g} > {FLOAT32_MAX:.4g}, float32's largest; the codecs compute in float32): "
            "scale it down"
        )


def check_bucket(bucket: int) -> int:
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1 or bucket >= 2**32:
        raise ValueError(f"bucket must be a positive integer below 2**32, got {bucket!r}")
    return bucket


def num_buckets(numel: int, bucket: int) -> int:
    return math.ceil(numel / bucket) if numel else 0


def bucketed(x: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``x`` to whole buckets: a ``(nb, bucket)`` view and each bucket's true length."""
    n = x.numel()
    nb = num_buckets(n, bucket)
    pad = nb * bucket - n
    xb = torch.nn.functional.pad(x, (0, pad)).view(nb, bucket) if pad else x.view(nb, bucket)
    lengths = torch.full((nb,), float(bucket), dtype=torch.float32, device=x.device)
    if pad:
        lengths[-1] = bucket - pad
    return xb, lengths


def bucket_sums(values: torch.Tensor) -> torch.Tensor:
    """Row sums of a ``(nb, B)`` float32 tensor in a fixed pairwise tree: pad each row with zeros
    to a power of two P >= B, then fold it in half until one value is left (``x[k] += x[k + P/2]``
    for k < P/2, then P/4, ...). Every addition is a single float32 rounding in a fixed order,
    which a compiled kernel repeats exactly with contiguous vector loads (torch's own ``sum``
    picks its order by vector width and threads)."""
    width = 1 << max(0, values.shape[1] - 1).bit_length()
    if width != values.shape[1]:
        values = torch.nn.functional.pad(values, (0, width - values.shape[1]))
    while width > 1:
        width //= 2
        values = values[:, :width] + values[:, width:]
    return values[:, 0] if values.shape[1] else values.new_zeros(values.shape[0])


def exact_sqrt(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root (IEEE 754's ``sqrt``). torch's CPU ``sqrt`` is
    not: its AVX-512 path rounds about 15% of float32 results the other way, so on the CPU this
    goes through numpy (the hardware instruction). The l2 bucket scales and Adam's denominator use
    it, so that the compiled kernels (whose sqrt is IEEE) reproduce them."""
    if x.device.type == "cpu" and x.numel():
        return torch.from_numpy(np.sqrt(x.contiguous().numpy()))
    return torch.sqrt(x)  # CUDA's sqrtf is correctly rounded


def per_element(per_bucket: torch.Tensor, numel: int, bucket: int) -> torch.Tensor:
    """Expand one value per bucket to one value per element (the last bucket may be short)."""
    return per_bucket.repeat_interleave(bucket)[:numel]


def check_scales(scales: torch.Tensor, codec: str) -> None:
    """Encoder side: a non-finite scale means non-finite input; say so instead of sending NaNs."""
    if scales.numel() and not bool(torch.isfinite(scales).all()):
        bad = int(torch.nonzero(~torch.isfinite(scales))[0])
        raise NonFiniteInput(f"codec '{codec}': input has NaN or Inf in bucket {bad}")


def check_decoded_scales(scales: torch.Tensor, codec: str) -> None:
    """Decoder side: scales must be finite and non-negative."""
    if scales.numel() and not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        raise WireFormatError(f"{codec}: a bucket scale is negative, NaN or Inf")


def require_header(codec: str, flags: int, aux: int, want_flags: int = 0, want_aux: int = 0, what="") -> None:
    """The flags and aux a layout needs; anything else is a malformed message."""
    if flags != want_flags or aux != want_aux:
        raise WireFormatError(
            f"{codec}: {what or 'this layout'} needs flags 0x{want_flags:02x} and aux {want_aux}, "
            f"message has flags 0x{flags:02x} and aux {aux}"
        )
