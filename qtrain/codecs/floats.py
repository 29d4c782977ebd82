"""Unbucketed float codecs: ``none`` (fp32 passthrough), ``fp16`` and ``bf16``.

``none`` is exact and is the wire format of the full-precision baselines (``sgd``, ``adam``).
``fp16``/``bf16`` round to nearest even: ||Q(x)-x|| <= u*||x|| with unit roundoff u = 2^-11
(fp16) or 2^-8 (bf16), for inputs inside the format's normal range (fp16 overflows above 65504).
They are what torch DDP's ``fp16_compress_hook``/``bf16_compress_hook`` send.
"""

from __future__ import annotations

import torch

from qtrain.codecs.base import Codec
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.wire import HEADER_SIZE


class FloatCodec(Codec):
    dtype: torch.dtype = torch.float32
    unit_roundoff: float = 0.0

    def wire_bytes(self, numel: int) -> int:
        return HEADER_SIZE + numel * self.bits // 8

    def delta(self) -> float:
        return self.unit_roundoff

    def _encode(self, x, generator):
        return self._assemble(x, [x.to(self.dtype)])

    def _decode(self, header, reader):
        if header.flags or header.aux:
            raise WireFormatError(f"{self.name}: flags and aux must be 0")
        return reader.take(header.numel, self.dtype, "values").to(torch.float32)


class NoneCodec(FloatCodec):
    """Identity: x is sent as raw float32 (32 bits per element). Exact: Q(x) = x."""

    name = "none"
    bits = 32
    dtype = torch.float32

    def _decode(self, header, reader):
        return super()._decode(header, reader).clone()


class Fp16Codec(FloatCodec):
    """IEEE half precision, round to nearest even: Q(x) = fp32(fp16(x)); 16 bits per element."""

    name = "fp16"
    bits = 16
    dtype = torch.float16
    unit_roundoff = 2.0**-11


class Bf16Codec(FloatCodec):
    """bfloat16, round to nearest even: Q(x) = fp32(bf16(x)); 16 bits per element."""

    name = "bf16"
    bits = 16
    dtype = torch.bfloat16
    unit_roundoff = 2.0**-8
