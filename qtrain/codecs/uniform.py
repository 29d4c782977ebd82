"""``uniform`` (s-level quantizer, QSGD / ECQ-SGD) and ``ternary`` (TernGrad).

For bucket j with scale r_j (``norm="l2"``: ||x_bucket||_2, QSGD, its sum of squares in
``bucket_sums``' fixed order; ``norm="linf"``:
max |x_i|, ECQ-SGD/TernGrad) and s levels, each element is mapped to the grid
{-s, ..., s} * r_j / s:

    t_i = s * |x_i| / r_j  in [0, s]
    l_i = floor(t_i + u_i), u_i ~ U[0, 1)            (``rounding="stochastic"``: E[l_i] = t_i;
                                                      u_i from Philox, ``codecs.philox``)
    l_i = floor(t_i + 1/2)                           (``rounding="nearest"``)
    Q(x)_i = sign(x_i) * l_i * r_j / s

Stochastic rounding is unbiased, E[Q(x)] = x (Alistarh et al., NeurIPS 2017, QSGD; used by
ECQ-SGD, Wu et al., ICML 2018, with error compensation on top). The wire code is
c_i = s + sign(x_i) * l_i in [0, 2s], so b = ceil(log2(2s+1)) bits per element; with ``bits``
given, s = 2^(b-1) - 1 (b=2: s=1, b=3: s=3, b=4: s=7, b=8: s=127).

Nearest rounding is deterministic with ||Q(x)-x|| <= delta ||x|| where every element is off by at
most min(|x_i|, r_j/(2s)):
  linf: delta = min(sqrt(1 - 1/B), sqrt(B - 1)/(2s))   (the largest element is exact)
  l2:   delta = min(1, sqrt(B)/(2s))

``ternary`` is TernGrad (Wen et al., NeurIPS 2017): s = 1, linf scale, stochastic rounding,
2 bits per element: Q(x)_i = r_j * sign(x_i) * Bernoulli(|x_i| / r_j).

Layout (both): one fp32 scale per bucket, then the codes c_i packed LSB-first; header aux = s.
"""

from __future__ import annotations

import math

import torch

from qtrain.codecs.base import (
    Codec,
    Quantized,
    bucket_sums,
    bucketed,
    check_bucket,
    check_decoded_scales,
    check_scales,
    exact_sqrt,
    num_buckets,
    per_element,
)
from qtrain.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.layout import Section
from qtrain.codecs.philox import uniforms

NORMS = ("l2", "linf")
ROUNDINGS = ("stochastic", "nearest")


def bits_for_levels(levels: int) -> int:
    return max(1, math.ceil(math.log2(2 * levels + 1)))


class UniformCodec(Codec):
    name = "uniform"

    def __init__(
        self,
        bits: int | None = None,
        levels: int | None = None,
        norm: str = "linf",
        rounding: str = "stochastic",
        bucket: int = 512,
    ):
        if levels is None:
            if bits is None:
                bits = 4
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"uniform: bits must be an integer in 2..8, got {bits!r}")
            levels = 2 ** (bits - 1) - 1
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 127:
            raise ValueError(f"uniform: levels must be an integer in 1..127, got {levels!r}")
        needed = bits_for_levels(levels)
        if bits is not None and bits != needed:
            raise ValueError(f"uniform: {levels} levels need {needed} bits, but bits={bits} was given")
        if norm not in NORMS:
            raise ValueError(f"uniform: norm must be one of {NORMS}, got {norm!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"uniform: rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.levels = levels
        self.bits = needed
        self.norm = norm
        self.rounding = rounding
        self.stochastic = rounding == "stochastic"
        self.bucket = check_bucket(bucket)

    def params(self):
        return {
            "bits": self.bits,
            "levels": self.levels,
            "norm": self.norm,
            "rounding": self.rounding,
            "bucket": self.bucket,
        }

    def delta(self) -> float | None:
        if self.stochastic:
            return None
        b, s = self.bucket, self.levels
        if self.norm == "linf":
            return min(math.sqrt(1 - 1 / b), math.sqrt(b - 1) / (2 * s))
        return min(1.0, math.sqrt(b) / (2 * s))

    def sections(self, numel, flags, aux):
        if flags:
            raise WireFormatError(f"{self.name}: flags must be 0, got 0x{flags:02x}")
        if aux != self.levels:
            raise WireFormatError(f"{self.name}: message has {aux} levels, this codec uses {self.levels}")
        return [
            Section("scales", torch.float32, num_buckets(numel, self.bucket), per="bucket"),
            Section("codes", torch.uint8, packed_nbytes(numel, self.bits), per="element", bits=self.bits),
        ]

    def largest_header(self, numel):
        return 0, self.levels

    def _quantize(self, x, rng, want_values):
        n, s = x.numel(), self.levels
        xb, _ = bucketed(x, self.bucket)
        scales = exact_sqrt(bucket_sums(xb * xb)) if self.norm == "l2" else xb.abs().amax(dim=1)
        check_scales(scales, self.name)
        r = per_element(scales, n, self.bucket)
        inv = torch.where(r > 0, s / r, torch.zeros_like(r))
        # a scale below s / FLT_MAX (subnormal r) overflows s / r: divide first there, |x| / r <= 1
        t = torch.where(torch.isinf(inv), (x.abs() / r) * s, x.abs() * inv)
        if self.stochastic:
            u = uniforms(rng, n, x.device)
            level = torch.floor(t + u)
        else:
            level = torch.floor(t + 0.5)
        level = level.clamp_(0, s).to(torch.uint8)
        codes = torch.where(x < 0, s - level, s + level)
        values = (codes.to(torch.float32) - s) * (r / s) if want_values else None
        return Quantized(0, s, [scales, pack_bits(codes, self.bits)], values)

    def _dequantize(self, numel, flags, aux, arrays, out):
        s = self.levels
        scales = arrays["scales"]
        check_decoded_scales(scales, self.name)
        codes = unpack_bits(arrays["codes"], self.bits, numel)
        if numel and int(codes.max()) > 2 * s:
            raise WireFormatError(f"{self.name}: code {int(codes.max())} outside 0..{2 * s}")
        step = per_element(scales, numel, self.bucket) / s
        torch.mul(codes.to(torch.float32) - s, step, out=out)


class TernaryCodec(UniformCodec):
    """TernGrad: s = 1, linf bucket scale, stochastic unbiased rounding, 2 bits per element."""

    name = "ternary"

    def __init__(self, bucket: int = 512):
        super().__init__(levels=1, norm="linf", rounding="stochastic", bucket=bucket)

    def params(self):
        return {"bucket": self.bucket}
