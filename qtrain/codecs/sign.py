"""``sign``: scaled sign, 1 bit per element plus one fp32 scale per bucket.

For bucket j with elements x_i (i in bucket j, d_j of them):

    a_j = (1/d_j) * sum_i |x_i|          (mean absolute value, the least-squares scale; the sum
                                          is ``bucket_sums``' fixed pairwise tree)
    Q(x)_i = a_j * s_i,   s_i = +1 if x_i >= 0 else -1

Zero (+0.0 and -0.0) maps to +a_j: the code bit is 1 for x_i >= 0, 0 for x_i < 0.

This is the scaled sign compressor of EF-signSGD (Karimireddy et al., ICML 2019) and the 1-bit
compressor Efficient-Adam (Chen et al., 2022) uses on both links. It is deterministic and a
contraction: ||Q(x)-x||^2 = ||x||^2 - ||x||_1^2/d_j per bucket <= (1 - 1/B) ||x||^2,
so delta = sqrt(1 - 1/B) for bucket size B.

Layout: one fp32 scale per bucket, then the sign bits (LSB-first).
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
    num_buckets,
    per_element,
    require_header,
)
from qtrain.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from qtrain.codecs.layout import Section


class SignCodec(Codec):
    name = "sign"
    bits = 1

    def __init__(self, bucket: int = 512):
        self.bucket = check_bucket(bucket)

    def params(self):
        return {"bucket": self.bucket}

    def delta(self) -> float:
        return math.sqrt(1.0 - 1.0 / self.bucket)

    def sections(self, numel, flags, aux):
        require_header(self.name, flags, aux)
        return [
            Section("scales", torch.float32, num_buckets(numel, self.bucket), per="bucket"),
            Section("signs", torch.uint8, packed_nbytes(numel, 1), per="element", bits=1),
        ]

    def _quantize(self, x, rng, want_values):
        xb, lengths = bucketed(x, self.bucket)
        scales = bucket_sums(xb.abs()) / lengths
        check_scales(scales, self.name)
        positive = x >= 0
        values = None
        if want_values:
            s = per_element(scales, x.numel(), self.bucket)
            values = torch.where(positive, s, -s)
        return Quantized(0, 0, [scales, pack_bits(positive.to(torch.uint8), 1)], values)

    def _dequantize(self, numel, flags, aux, arrays, out):
        scales = arrays["scales"]
        check_decoded_scales(scales, self.name)
        positive = unpack_bits(arrays["signs"], 1, numel).bool()
        s = per_element(scales, numel, self.bucket)
        torch.where(positive, s, -s, out=out)
