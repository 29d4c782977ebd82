"""``sign``: scaled sign, 1 bit per element plus one fp32 scale per bucket.

For bucket j with elements x_i (i in bucket j, d_j of them):

    a_j = (1/d_j) * sum_i |x_i|          (mean absolute value, the least-squares scale)
    Q(x)_i = a_j * s_i,   s_i = +1 if x_i >= 0 else -1

Zero (+0.0 and -0.0) maps to +a_j: the code bit is 1 for x_i >= 0, 0 for x_i < 0.

This is the scaled sign compressor of EF-signSGD (Karimireddy et al., ICML 2019) and the 1-bit
compressor Efficient-Adam (Chen et al., 2022) uses on both links. It is deterministic and a
contraction: ||Q(x)-x||^2 = ||x||^2 - ||x||_1^2/d_j per bucket <= (1 - 1/B) ||x||^2,
so delta = sqrt(1 - 1/B) for bucket size B.
"""

from __future__ import annotations

import math

import torch

from qtrain.codecs.base import (
    Codec,
    bucketed,
    check_bucket,
    check_decoded_scales,
    check_scales,
    num_buckets,
    per_element,
)
from qtrain.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.wire import HEADER_SIZE


class SignCodec(Codec):
    name = "sign"
    bits = 1

    def __init__(self, bucket: int = 512):
        self.bucket = check_bucket(bucket)

    def params(self):
        return {"bucket": self.bucket}

    def delta(self) -> float:
        return math.sqrt(1.0 - 1.0 / self.bucket)

    def wire_bytes(self, numel: int) -> int:
        return HEADER_SIZE + 4 * num_buckets(numel, self.bucket) + packed_nbytes(numel, 1)

    def _encode(self, x, generator):
        xb, lengths = bucketed(x, self.bucket)
        scales = xb.abs().sum(dim=1) / lengths
        check_scales(scales, self.name)
        codes = (x >= 0).to(torch.uint8)
        return self._assemble(x, [scales, pack_bits(codes, 1)])

    def _decode(self, header, reader):
        if header.flags or header.aux:
            raise WireFormatError("sign: flags and aux must be 0")
        n = header.numel
        scales = reader.take(num_buckets(n, self.bucket), torch.float32, "bucket scales")
        check_decoded_scales(scales, self.name)
        codes = unpack_bits(reader.take(packed_nbytes(n, 1), torch.uint8, "sign bits"), 1, n)
        s = per_element(scales, n, self.bucket)
        return torch.where(codes.bool(), s, -s)
