"""``topk``: the k largest-magnitude elements of every bucket, sent as (index, value) pairs.

For bucket j (d_j elements), with k_j = min(k, d_j) and T_j its k_j largest |x_i|:

    Q(x)_i = x_i if i in T_j else 0

The baseline of sparsification papers (Aji & Heafield 2017; Stich et al., NeurIPS 2018, with
error feedback "memory"). Deterministic: ||Q(x)-x||^2 <= (1 - k/B) ||x||^2, so
delta = sqrt(1 - k/B) with fp32 values (plus the fp16 unit roundoff 2^-11 with fp16 values).
Ties between equal magnitudes are broken by ``torch.topk``.

Since k is fixed per bucket the size is known in advance. Layout: all values (fp32 or fp16,
``bits`` = 32 or 16), then all indices in increasing order within each bucket: bucket-local
uint16 (flag FLAG_LOCAL16, used whenever bucket <= 65536) or global int32. Header aux = k.
"""

from __future__ import annotations

import math

import torch

from qtrain.codecs.base import Codec, Quantized, check_bucket, num_buckets
from qtrain.codecs.errors import NonFiniteInput, WireFormatError
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.layout import Section
from qtrain.codecs.wire import FLAG_LOCAL16

VALUE_TYPES = {"fp32": torch.float32, "fp16": torch.float16}


class TopKCodec(Codec):
    name = "topk"

    def __init__(self, k: int | None = None, ratio: float = 0.01, values: str = "fp32", bucket: int = 512):
        self.bucket = check_bucket(bucket)
        if k is None:
            if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise ValueError(f"topk: ratio must be in (0, 1], got {ratio!r}")
            k = max(1, round(ratio * self.bucket))
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.bucket:
            raise ValueError(f"topk: k must be an integer in 1..bucket ({self.bucket}), got {k!r}")
        if values not in VALUE_TYPES:
            raise ValueError(f"topk: values must be one of {tuple(VALUE_TYPES)}, got {values!r}")
        self.k = k
        self.values = values
        self.value_dtype = VALUE_TYPES[values]
        self.bits = 32 if values == "fp32" else 16
        self.local16 = self.bucket <= 65536

    def params(self):
        return {"k": self.k, "values": self.values, "bucket": self.bucket}

    def delta(self) -> float:
        return math.sqrt(1 - self.k / self.bucket) + (2.0**-11 if self.values == "fp16" else 0.0)

    def _kept(self, numel: int) -> int:
        full, rem = divmod(numel, self.bucket)
        return full * self.k + min(self.k, rem)

    def sections(self, numel, flags, aux):
        expected_flags = FLAG_LOCAL16 if self.local16 else 0
        if flags != expected_flags:
            raise WireFormatError(f"topk: flags 0x{flags:02x}, expected 0x{expected_flags:02x}")
        if aux != self.k:
            raise WireFormatError(f"topk: message has k={aux}, this codec uses k={self.k}")
        kept = self._kept(numel)
        return [
            Section("values", self.value_dtype, kept),
            Section("indices", torch.uint16 if self.local16 else torch.int32, kept),
        ]

    def largest_header(self, numel):
        return (FLAG_LOCAL16 if self.local16 else 0), self.k

    def _bucket_of_entry(self, numel: int, device) -> torch.Tensor:
        nb = num_buckets(numel, self.bucket)
        per = torch.full((nb,), self.k, dtype=torch.int64, device=device)
        if nb:
            per[-1] = min(self.k, numel - (nb - 1) * self.bucket)
        return torch.repeat_interleave(torch.arange(nb, device=device), per)

    def _quantize(self, x, rng, want_values):
        n, b, k = x.numel(), self.bucket, self.k
        full = n // b
        local_parts, value_parts = [], []
        if full:
            xf = x[: full * b].view(full, b)
            local = xf.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values
            local_parts.append(local.reshape(-1))
            value_parts.append(xf.gather(1, local).reshape(-1))
        if n > full * b:
            xr = x[full * b :]
            local = xr.abs().topk(min(k, xr.numel()), sorted=False).indices.sort().values
            local_parts.append(local)
            value_parts.append(xr[local])
        local = torch.cat(local_parts) if local_parts else torch.zeros(0, dtype=torch.int64, device=x.device)
        vals = torch.cat(value_parts) if value_parts else torch.zeros(0, device=x.device)
        if vals.numel() and not bool(torch.isfinite(vals).all()):
            raise NonFiniteInput("codec 'topk': input has NaN or Inf")
        glob = local + self._bucket_of_entry(n, x.device) * b
        sent = vals.to(self.value_dtype)
        values = None
        if want_values:
            values = torch.zeros(n, dtype=torch.float32, device=x.device)
            values[glob] = sent.to(torch.float32)
        if self.local16:
            return Quantized(FLAG_LOCAL16, k, [sent, local.to(torch.uint16)], values)
        return Quantized(0, k, [sent, glob.to(torch.int32)], values)

    def _entries(self, numel, arrays):
        """(global indices, float32 values) of a message, the indices checked."""
        if self.local16:
            local = arrays["indices"].to(torch.int64)
            if local.numel() and int(local.max()) >= self.bucket:
                raise WireFormatError(f"topk: a bucket-local index is >= bucket size {self.bucket}")
            idx = local + self._bucket_of_entry(numel, local.device) * self.bucket
        else:
            idx = arrays["indices"]
        # strictly increasing globally <=> sorted, unique and inside its own bucket
        idx = check_increasing_indices(idx, numel, self.name)
        return idx, arrays["values"].to(torch.float32)

    def _dequantize(self, numel, flags, aux, arrays, out):
        idx, vals = self._entries(numel, arrays)
        out.zero_()
        out[idx] = vals

    def _accumulate(self, n, flags, aux, arrays, layout, acc):
        idx, vals = self._entries(n, arrays)
        acc.index_add_(0, idx, vals)
