"""An optional lossless stage after quantization: the payload of a quantizing codec's message
compressed with Zstandard (``entropy: zstd`` on a link).

Why: a quantizer's codes are far from uniformly distributed. ECQ-SGD's 2-bit codes with l2 bucket
scaling are zero for most elements (|x_i| / ||x_bucket||_2 is about 1/sqrt(B)), so their entropy
is a fraction of a bit. Wu et al. (ICML 2018, ECQ-SGD, Section 5) reach "up to two orders of
magnitude" of compression only with a Huffman stage after quantization; QSGD (Alistarh et al.
2017, Section 3.2) uses Elias coding for the same reason. Zstandard's entropy coders (Huffman for
literals, FSE for match lengths) and its run-length matches play that role here, at hundreds of MB/s
on one core.

The message: the same 40-byte header with ``FLAG_ENTROPY`` (0x04) added to the flags, the payload
length of the compressed bytes, the CRC-32C over the header fields and the *compressed* payload
(what travels), then one Zstandard frame whose content is the quantizer's raw payload. A receiver
checks the CRC first, then decompresses into exactly the number of bytes the inner codec's layout
declares for (numel, flags, aux) and nothing more; any mismatch is a ``WireFormatError``. When the
frame would not be smaller than the raw payload, the raw message is sent unchanged (no flag), so a
message is never larger than the inner codec's: ``wire_bytes`` stays the inner codec's bound, and
the size now varies (``fixed_size`` is False: the transport sends its length first).

Tuning: ``entropy_level`` 1 to 19 (default 3). Level 1 to 3 keep up with a 10 Gb/s link on one core
for the sparse codes above; higher levels gain a few percent for several times the CPU. Worth it on
slow links with codes that are mostly one value (uniform l2 with few levels, ternary, threshold); it
gains little on sign or float codes, whose bits are close to random.
"""

from __future__ import annotations

from typing import Any

import torch
import zstandard

from qtrain.codecs import wire
from qtrain.codecs.base import Codec, check_decodes_unasked
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.layout import payload_bytes

METHODS = ("zstd",)
DEFAULT_LEVEL = 3
# The most a Zstandard frame can expand: a 3-byte block header + 1 byte of an RLE block stands for at
# most 128 KiB, so no valid frame of c bytes decompresses to more than 2^15 * c bytes. A header that
# announces more than that is refused before anything is allocated.
MAX_RATIO = 1 << 15


class EntropyCoded(Codec):
    """``inner``'s messages with their payload compressed by Zstandard (see the module docstring).

    Same name, codec id, bits and bucket as ``inner`` (the header says which quantizer made the
    codes); ``params()`` adds ``entropy`` and ``entropy_level``, which ``get_codec`` accepts for
    every codec."""

    fixed_size = False

    def __init__(self, inner: Codec, method: str = "zstd", level: int = DEFAULT_LEVEL):
        if isinstance(inner, EntropyCoded):
            raise ValueError("entropy: the codec already has an entropy stage")
        if method not in METHODS:
            raise ValueError(f"entropy must be one of {', '.join(METHODS)} (or unset), got {method!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 19:
            raise ValueError(f"entropy_level must be an integer in 1..19, got {level!r}")
        self.inner, self.method, self.level = inner, method, level
        self.name, self.bits, self.bucket = inner.name, inner.bits, inner.bucket
        self.stochastic = inner.stochastic
        self._compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._decompressor = zstandard.ZstdDecompressor()

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "entropy": self.method, "entropy_level": self.level}

    def delta(self) -> float | None:
        return self.inner.delta()

    def sections(self, numel: int, flags: int, aux: int):
        return self.inner.sections(numel, flags, aux)

    def largest_header(self, numel: int) -> tuple[int, int]:
        return self.inner.largest_header(numel)

    def wire_bytes(self, numel: int) -> int:
        return self.inner.wire_bytes(numel)  # a frame that would not be smaller is not sent

    # ------------------------------------------------------------------ the stage itself
    def compress(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The entropy-coded form of ``raw`` (a valid message of ``inner``), written into ``out``
        when given (any device, at least ``raw``'s size); ``raw`` itself where compression does
        not pay."""
        header = wire.read_header(raw, check_crc=False)  # our own encoder's message
        payload = wire.host_bytes(raw[wire.HEADER_SIZE :])
        frame = self._compressor.compress(payload)
        if len(frame) >= len(payload):
            if out is None or out.data_ptr() == raw.data_ptr():
                return raw
            target = out[: raw.numel()]
            target.copy_(raw)
            return target
        size = wire.HEADER_SIZE + len(frame)
        if out is None:
            out = torch.empty(size, dtype=torch.uint8, device=raw.device)
        message = out[:size]
        message[wire.HEADER_SIZE :].copy_(torch.frombuffer(bytearray(frame), dtype=torch.uint8))
        return wire.finish_message(
            message,
            header.codec_id,
            header.bits,
            header.flags | wire.FLAG_ENTROPY,
            header.numel,
            header.bucket,
            header.aux,
        )

    def expand(self, packed: torch.Tensor, numel: int | None = None) -> torch.Tensor:
        """The raw message of ``inner`` that ``packed`` carries (``packed`` itself when it was sent
        raw). Checks the CRC of what travelled, then, before anything is decompressed, that the
        frame may be inflated at all: to the ``numel`` elements the receiver expects (its buffer's
        size), or, without ``numel`` (``decode()`` without ``out=``), to no more than max(64 MiB,
        64x the message) (``base.decodes_unasked``); then that the frame holds exactly the payload
        the inner layout declares. It is decompressed straight into the raw message, never past
        that size. Raises ``WireFormatError``."""
        header = wire.read_header(packed)
        if not header.flags & wire.FLAG_ENTROPY:
            return packed
        if header.codec_id != self.codec_id:
            raise WireFormatError(
                f"message was encoded by codec '{header.codec_name}', this decoder is '{self.name}'"
            )
        flags = header.flags & ~wire.FLAG_ENTROPY
        expected = payload_bytes(self.inner.sections(header.numel, flags, header.aux))
        if expected > MAX_RATIO * header.payload_len:
            raise WireFormatError(
                f"{self.name}+{self.method}: a {header.payload_len}-byte frame cannot hold the "
                f"{expected}-byte payload the header announces"
            )
        if numel is None:
            check_decodes_unasked(self.name, header.numel, packed)
        elif header.numel != numel:
            raise WireFormatError(
                f"{self.name}+{self.method}: the message announces {header.numel} elements, the "
                f"receiver expects {numel}"
            )
        frame = wire.host_bytes(packed[wire.HEADER_SIZE :])
        try:
            announced = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as exc:
            raise WireFormatError(f"{self.name}+{self.method}: not a Zstandard frame ({exc})") from None
        if announced != expected:
            raise WireFormatError(
                f"{self.name}+{self.method}: the frame holds {announced} bytes, the layout needs {expected}"
            )
        raw = torch.empty(wire.HEADER_SIZE + expected, dtype=torch.uint8)
        self._inflate(frame, raw[wire.HEADER_SIZE :].numpy())
        raw = wire.finish_message(
            raw, header.codec_id, header.bits, flags, header.numel, header.bucket, header.aux
        )
        return raw.to(packed.device)

    def _inflate(self, frame: memoryview, target) -> None:
        """Decompress ``frame`` into ``target`` (a uint8 numpy array), which it must fill exactly:
        a frame that ends early, goes on past it or is followed by anything is a
        ``WireFormatError``. Nothing is allocated beyond ``target``."""
        filled = 0
        try:
            with self._decompressor.stream_reader(frame, read_across_frames=False) as reader:
                view = memoryview(target)
                while filled < len(view):
                    got = reader.readinto(view[filled:])
                    if not got:
                        break
                    filled += got
                more = reader.read(1)
        except zstandard.ZstdError as exc:
            raise WireFormatError(f"{self.name}+{self.method}: damaged frame ({exc})") from None
        if filled != len(target) or more:
            raise WireFormatError(
                f"{self.name}+{self.method}: the frame decompressed to "
                f"{'more than ' if more else ''}{filled} bytes, the layout needs {len(target)}"
            )

    # ------------------------------------------------------------------ the Codec interface
    def quantize(self, x, rng=None, out=None, want_values=True):
        raw, values = self.inner.quantize(x, rng, None, want_values)
        self.check_frame(raw, out)
        return self.compress(raw, out), values

    def check_frame(self, raw: torch.Tensor, out: torch.Tensor | None) -> None:
        """``out`` (when given) can hold ``raw``, the inner codec's message, as compress needs."""
        if out is not None and (out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < raw.numel()):
            raise ValueError(
                f"{self.name}: encode(out=...) needs a contiguous 1-D uint8 tensor of >= {raw.numel()} bytes"
            )

    def decode(self, packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The inner codec's ``decode``, its frame inflated only to ``out``'s size (or, without
        ``out``, within the bound of ``decode()`` without ``out=``)."""
        return self.inner.decode(self.expand(packed, _numel(out)), out)

    def decode_add_(self, packed: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self.inner.decode_add_(self.expand(packed, _numel(acc)), acc)

    def __repr__(self) -> str:
        return f"EntropyCoded({self.inner!r}, {self.method!r}, level={self.level})"


def _numel(buffer) -> int | None:
    """The element count a receiving buffer expects (None without one; the inner codec refuses a
    buffer that is not a 1-D float32 tensor in its own words)."""
    return buffer.numel() if isinstance(buffer, torch.Tensor) else None
