"""``threshold``: thresholded ternary quantizer for QCMD/QRDA (Xu et al., 2022).

For bucket j with reference m_j (``reference="linf"``: max |x_i|; ``"mean"``: mean |x_i|) and
threshold tau_j = kappa * m_j, the kept set is K_j = {i : |x_i| >= tau_j, x_i != 0} and

    a_j = (1/|K_j|) * sum_{i in K_j} |x_i|      (least-squares scale over the kept elements)
    Q(x)_i = sign(x_i) * a_j   if i in K_j,   0 otherwise.

Deterministic. ||Q(x)-x||^2 = ||x||^2 - |K_j| a_j^2 per bucket, which never exceeds ||x||^2; when
the largest element is kept (kappa <= 1, either reference) it is a contraction with
delta = sqrt(1 - 1/B^2).

Two layouts, chosen per message (``layout="auto"``) by size, and named by the header flag:
  dense  (flags 0):        fp32 scale per bucket, then 2-bit codes c_i in {0: -a, 1: 0, 2: +a}
  sparse (FLAG_SPARSE):    fp32 scale per bucket, then |K| int32 global indices (increasing),
                           then |K| sign bits (1 = positive); header aux = |K|
The message size depends on the data: ``wire_bytes(n)`` is the upper bound (the dense size for
``layout="auto"``); senders transmit the actual size first.
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
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.wire import FLAG_SPARSE, HEADER_SIZE

REFERENCES = ("linf", "mean")
LAYOUTS = ("auto", "dense", "sparse")


class ThresholdCodec(Codec):
    name = "threshold"
    bits = 2
    fixed_size = False

    def __init__(self, kappa: float = 1.0, reference: str = "mean", bucket: int = 512, layout: str = "auto"):
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0 <= kappa < math.inf:
            raise ValueError(f"threshold: kappa must be a finite number >= 0, got {kappa!r}")
        if reference not in REFERENCES:
            raise ValueError(f"threshold: reference must be one of {REFERENCES}, got {reference!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"threshold: layout must be one of {LAYOUTS}, got {layout!r}")
        self.kappa = float(kappa)
        self.reference = reference
        self.layout = layout
        self.bucket = check_bucket(bucket)

    def params(self):
        return {
            "kappa": self.kappa,
            "reference": self.reference,
            "bucket": self.bucket,
            "layout": self.layout,
        }

    def delta(self) -> float:
        return math.sqrt(1 - 1 / self.bucket**2) if self.kappa <= 1 else 1.0

    def _dense_bytes(self, numel: int) -> int:
        return HEADER_SIZE + 4 * num_buckets(numel, self.bucket) + packed_nbytes(numel, 2)

    def _sparse_bytes(self, numel: int, kept: int) -> int:
        return HEADER_SIZE + 4 * num_buckets(numel, self.bucket) + 4 * kept + packed_nbytes(kept, 1)

    def wire_bytes(self, numel: int) -> int:
        if self.layout == "sparse":
            return self._sparse_bytes(numel, numel)
        return self._dense_bytes(numel)

    def _encode(self, x, generator):
        n = x.numel()
        xb, lengths = bucketed(x, self.bucket)
        ax = xb.abs()
        ref = ax.amax(dim=1) if self.reference == "linf" else ax.sum(dim=1) / lengths
        check_scales(ref, self.name)
        keep_b = (ax >= (self.kappa * ref)[:, None]) & (ax > 0)
        count = keep_b.sum(dim=1)
        scales = (ax * keep_b).sum(dim=1) / count.clamp(min=1).to(torch.float32)
        keep = keep_b.view(-1)[:n]
        kept = int(count.sum())
        sparse = self.layout == "sparse" or (
            self.layout == "auto" and self._sparse_bytes(n, kept) < self._dense_bytes(n)
        )
        if sparse:
            idx = torch.nonzero(keep).view(-1)
            signs = (x[idx] >= 0).to(torch.uint8)
            sections = [scales, idx.to(torch.int32), pack_bits(signs, 1)]
            return self._assemble(x, sections, flags=FLAG_SPARSE, aux=kept)
        codes = torch.where(keep, torch.where(x >= 0, 2, 0), 1).to(torch.uint8)
        return self._assemble(x, [scales, pack_bits(codes, 2)])

    def _decode(self, header, reader):
        n = header.numel
        scales = reader.take(num_buckets(n, self.bucket), torch.float32, "bucket scales")
        check_decoded_scales(scales, self.name)
        if header.flags == FLAG_SPARSE:
            kept = header.aux
            if kept > n:
                raise WireFormatError(f"threshold: {kept} kept entries for {n} elements")
            idx = check_increasing_indices(reader.take(kept, torch.int32, "indices"), n, self.name)
            signs = unpack_bits(reader.take(packed_nbytes(kept, 1), torch.uint8, "sign bits"), 1, kept)
            a = scales[idx // self.bucket]
            out = torch.zeros(n, dtype=torch.float32, device=scales.device)
            out[idx] = torch.where(signs.bool(), a, -a)
            return out
        if header.flags or header.aux:
            raise WireFormatError("threshold: dense layout needs flags 0 and aux 0")
        codes = unpack_bits(reader.take(packed_nbytes(n, 2), torch.uint8, "codes"), 2, n)
        if n and int(codes.max()) > 2:
            raise WireFormatError("threshold: code 3 is not a valid ternary code")
        return (codes.to(torch.float32) - 1) * per_element(scales, n, self.bucket)
