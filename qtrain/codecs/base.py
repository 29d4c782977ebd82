"""The codec interface and the helpers every codec shares (input checks, buckets, header checks)."""

from __future__ import annotations

import math
from typing import Any

import torch

from qtrain.codecs import wire
from qtrain.codecs.errors import WireFormatError


class Codec:
    """Turns a 1-D float tensor into one contiguous ``uint8`` message and back.

    Subclasses set ``name``, ``bits`` and implement ``_encode``/``_decode``/``wire_bytes``.
    ``fixed_size`` is True when ``wire_bytes(n)`` is the exact message size for every input
    (dense codecs); for variable-size codecs it is an upper bound.
    ``stochastic`` codecs draw from the ``generator`` passed to :meth:`encode`.
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

    def wire_bytes(self, numel: int) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode a 1-D float tensor (any float dtype, any device) into a uint8 message."""
        return self._encode(as_flat_float(x, self.name), generator)

    def decode(self, packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Validate and decode a message into a float32 tensor on the message's device.

        With ``out`` (a 1-D float32 tensor of the right length), the result is written there.
        Raises :class:`WireFormatError` on any malformed, corrupted or mismatched message.
        """
        header = wire.read_header(packed)
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
        reader = wire.SectionReader(packed, header)
        result = self._decode(header, reader)
        reader.finish()
        if out is None:
            return result
        if out.dim() != 1 or out.numel() != result.numel() or out.dtype != torch.float32:
            raise ValueError(
                f"decode(out=...) needs a 1-D float32 tensor of {result.numel()} elements, got "
                f"{tuple(out.shape)} {out.dtype}"
            )
        return out.copy_(result)

    def _encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, header: wire.Header, reader: wire.SectionReader) -> torch.Tensor:
        raise NotImplementedError

    def _assemble(self, x: torch.Tensor, sections: list[torch.Tensor], flags: int = 0, aux: int = 0):
        return wire.assemble(self.codec_id, self.bits, flags, x.numel(), self.bucket, aux, sections, x.device)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and (self.name, self.params()) == (other.name, other.params())

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params().items()))))


def as_flat_float(x: torch.Tensor, codec: str) -> torch.Tensor:
    """Check the encoder input and return it as a contiguous 1-D float32 tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"codec '{codec}' encodes a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"codec '{codec}' encodes 1-D tensors, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"codec '{codec}' encodes floating-point tensors, got {x.dtype}")
    return x.to(torch.float32).contiguous()


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


def per_element(per_bucket: torch.Tensor, numel: int, bucket: int) -> torch.Tensor:
    """Expand one value per bucket to one value per element (the last bucket may be short)."""
    return per_bucket.repeat_interleave(bucket)[:numel]


def check_scales(scales: torch.Tensor, codec: str) -> None:
    """Encoder side: a non-finite scale means non-finite input; say so instead of sending NaNs."""
    if scales.numel() and not bool(torch.isfinite(scales).all()):
        bad = int(torch.nonzero(~torch.isfinite(scales))[0])
        raise ValueError(f"codec '{codec}': input has NaN or Inf in bucket {bad}")


def check_decoded_scales(scales: torch.Tensor, codec: str) -> None:
    """Decoder side: scales must be finite and non-negative."""
    if scales.numel() and not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        raise WireFormatError(f"{codec}: a bucket scale is negative, NaN or Inf")
