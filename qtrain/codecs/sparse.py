"""``sparse``: lossless fp32 codec for vectors with many exact zeros (sparse models).

The downlink of ``qcmd-adagrad``/``qrda-adagrad`` (Xu et al., 2022) carries the l1-regularized
model itself, whose prox step produces exact zeros. Layouts, chosen per message by size:
  sparse (FLAG_SPARSE): header aux = nnz; nnz int32 indices (increasing), then nnz fp32 values
  dense  (flags 0):     n fp32 values, as ``none``
Q(x) = x exactly, except that -0.0 is sent as +0.0 in the sparse layout. ``wire_bytes(n)`` is the
upper bound (dense).
"""

from __future__ import annotations

import torch

from qtrain.codecs.base import Codec, Quantized, require_header
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.layout import Section
from qtrain.codecs.wire import FLAG_SPARSE


class SparseCodec(Codec):
    name = "sparse"
    bits = 32
    fixed_size = False

    def delta(self) -> float:
        return 0.0

    def sections(self, numel, flags, aux):
        if flags == FLAG_SPARSE:
            if aux > numel:
                raise WireFormatError(f"sparse: {aux} nonzeros for {numel} elements")
            return [Section("indices", torch.int32, aux), Section("values", torch.float32, aux)]
        require_header(self.name, flags, aux, what="the dense layout")
        return [Section("values", torch.float32, numel, per="element", bits=32)]

    def _quantize(self, x, rng, want_values):
        nonzero = x != 0
        idx = torch.nonzero(nonzero).view(-1)
        if 8 * idx.numel() < 4 * x.numel():
            values = torch.where(nonzero, x, 0.0) if want_values else None
            return Quantized(FLAG_SPARSE, idx.numel(), [idx.to(torch.int32), x[idx]], values)
        return Quantized(0, 0, [x], x)

    def _entries(self, numel, arrays):
        return check_increasing_indices(arrays["indices"], numel, self.name), arrays["values"]

    def _dequantize(self, numel, flags, aux, arrays, out):
        if flags == FLAG_SPARSE:
            idx, vals = self._entries(numel, arrays)
            out.zero_()
            out[idx] = vals
        else:
            out.copy_(arrays["values"])

    def _accumulate(self, n, flags, aux, arrays, layout, acc):
        if flags == FLAG_SPARSE:
            idx, vals = self._entries(n, arrays)
            acc.index_add_(0, idx, vals)
        else:
            acc.add_(arrays["values"])
