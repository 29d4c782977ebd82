"""Unbucketed float codecs: ``none`` (fp32 passthrough), ``fp16`` and ``bf16``.

``none`` is exact and is the wire format of the full-precision baselines (``sgd``, ``adam``).
``fp16``/``bf16`` round to nearest even: ||Q(x)-x|| <= u*||x|| with unit roundoff u = 2^-11
(fp16) or 2^-8 (bf16), for inputs inside the format's normal range (fp16 overflows above 65504).
They are what torch DDP's ``fp16_compress_hook``/``bf16_compress_hook`` send.

Layout: the n values, nothing else; flags and aux are 0.
"""

from __future__ import annotations

import torch

from qtrain.codecs.base import Codec, Quantized, require_header
from qtrain.codecs.layout import Section


class FloatCodec(Codec):
    dtype: torch.dtype = torch.float32
    unit_roundoff: float = 0.0

    def delta(self) -> float:
        return self.unit_roundoff

    def sections(self, numel, flags, aux):
        require_header(self.name, flags, aux)
        return [Section("values", self.dtype, numel, per="element", bits=self.bits)]

    def _quantize(self, x, rng, want_values):
        sent = x.to(self.dtype)
        values = (sent if self.dtype == torch.float32 else sent.to(torch.float32)) if want_values else None
        return Quantized(0, 0, [sent], values)

    def _dequantize(self, numel, flags, aux, arrays, out):
        out.copy_(arrays["values"])

    def _accumulate(self, n, flags, aux, arrays, layout, acc):
        acc.add_(arrays["values"])  # fp16/bf16 widen exactly inside the add


class NoneCodec(FloatCodec):
    """Identity: x is sent as raw float32 (32 bits per element). Exact: Q(x) = x."""

    name = "none"
    bits = 32
    dtype = torch.float32


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
