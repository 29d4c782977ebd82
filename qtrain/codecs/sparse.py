"""``sparse``: lossless fp32 codec for vectors with many exact zeros (sparse models).

The downlink of ``qcmd-adagrad``/``qrda-adagrad`` (Xu et al., 2022) carries the l1-regularized
model itself, whose prox step produces exact zeros. Layouts, chosen per message by size:
  sparse (FLAG_SPARSE): header aux = nnz; nnz int32 indices (increasing), then nnz fp32 values
  dense  (flags 0):     n fp32 values, as ``none``
Q(x) = x exactly, except that -0.0 is sent as +0.0. ``wire_bytes(n)`` is the upper bound (dense).
"""

from __future__ import annotations

import torch

from qtrain.codecs.base import Codec
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.wire import FLAG_SPARSE, HEADER_SIZE


class SparseCodec(Codec):
    name = "sparse"
    bits = 32
    fixed_size = False

    def delta(self) -> float:
        return 0.0

    def wire_bytes(self, numel: int) -> int:
        return HEADER_SIZE + 4 * numel

    def _encode(self, x, generator):
        idx = torch.nonzero(x != 0).view(-1)
        if 8 * idx.numel() < 4 * x.numel():
            return self._assemble(x, [idx.to(torch.int32), x[idx]], flags=FLAG_SPARSE, aux=idx.numel())
        return self._assemble(x, [x])

    def _decode(self, header, reader):
        n = header.numel
        if header.flags == FLAG_SPARSE:
            if header.aux > n:
                raise WireFormatError(f"sparse: {header.aux} nonzeros for {n} elements")
            idx = check_increasing_indices(reader.take(header.aux, torch.int32, "indices"), n, self.name)
            vals = reader.take(header.aux, torch.float32, "values")
            out = torch.zeros(n, dtype=torch.float32, device=vals.device)
            out[idx] = vals
            return out
        if header.flags or header.aux:
            raise WireFormatError("sparse: dense layout needs flags 0 and aux 0")
        return reader.take(n, torch.float32, "values").clone()
