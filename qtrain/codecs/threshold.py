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
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.layout import Section
from qtrain.codecs.wire import FLAG_SPARSE

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

    def sections(self, numel, flags, aux):
        scales = Section("scales", torch.float32, num_buckets(numel, self.bucket), per="bucket")
        if flags == FLAG_SPARSE:
            if aux > numel:
                raise WireFormatError(f"threshold: {aux} kept entries for {numel} elements")
            return [
                scales,
                Section("indices", torch.int32, aux),
                Section("signs", torch.uint8, packed_nbytes(aux, 1)),
            ]
        require_header(self.name, flags, aux, what="the dense layout")
        return [scales, Section("codes", torch.uint8, packed_nbytes(numel, 2), per="element", bits=2)]

    def largest_header(self, numel):
        return (FLAG_SPARSE, numel) if self.layout == "sparse" else (0, 0)

    def _sparse_is_smaller(self, numel: int, kept: int) -> bool:
        # the scales are common to both layouts: compare the rest
        return 4 * kept + packed_nbytes(kept, 1) < packed_nbytes(numel, 2)

    def _quantize(self, x, rng, want_values):
        n = x.numel()
        xb, lengths = bucketed(x, self.bucket)
        ax = xb.abs()
        ref = ax.amax(dim=1) if self.reference == "linf" else bucket_sums(ax) / lengths
        check_scales(ref, self.name)
        keep_b = (ax >= (self.kappa * ref)[:, None]) & (ax > 0)
        count = keep_b.sum(dim=1)
        scales = bucket_sums(ax * keep_b) / count.clamp(min=1).to(torch.float32)
        check_scales(scales, self.name)  # the kept sum can overflow where the reference did not
        keep = keep_b.view(-1)[:n]
        kept = int(count.sum())
        positive = x >= 0
        values = None
        if want_values:
            a = per_element(scales, n, self.bucket)
            values = torch.where(keep, torch.where(positive, a, -a), 0.0)
        sparse = self.layout == "sparse" or (self.layout == "auto" and self._sparse_is_smaller(n, kept))
        if sparse:
            idx = torch.nonzero(keep).view(-1)
            arrays = [scales, idx.to(torch.int32), pack_bits(positive[idx].to(torch.uint8), 1)]
            return Quantized(FLAG_SPARSE, kept, arrays, values)
        codes = torch.where(keep, torch.where(positive, 2, 0), 1).to(torch.uint8)
        return Quantized(0, 0, [scales, pack_bits(codes, 2)], values)

    def _sparse_entries(self, numel, aux, arrays):
        """(global indices, signed values) of a sparse-layout message."""
        scales = arrays["scales"]
        check_decoded_scales(scales, self.name)
        idx = check_increasing_indices(arrays["indices"], numel, self.name)
        signs = unpack_bits(arrays["signs"], 1, aux)
        a = scales[idx // self.bucket]
        return idx, torch.where(signs.bool(), a, -a)

    def _dequantize(self, numel, flags, aux, arrays, out):
        if flags == FLAG_SPARSE:
            idx, vals = self._sparse_entries(numel, aux, arrays)
            out.zero_()
            out[idx] = vals
            return
        scales = arrays["scales"]
        check_decoded_scales(scales, self.name)
        codes = unpack_bits(arrays["codes"], 2, numel)
        if numel and int(codes.max()) > 2:
            raise WireFormatError("threshold: code 3 is not a valid ternary code")
        torch.mul(codes.to(torch.float32) - 1, per_element(scales, numel, self.bucket), out=out)

    def _accumulate(self, n, flags, aux, arrays, layout, acc):
        if flags != FLAG_SPARSE:
            return super()._accumulate(n, flags, aux, arrays, layout, acc)
        idx, vals = self._sparse_entries(n, aux, arrays)
        acc.index_add_(0, idx, vals)
