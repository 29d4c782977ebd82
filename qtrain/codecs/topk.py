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

from qtrain.codecs.base import Codec, check_bucket, num_buckets
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.indices import check_increasing_indices
from qtrain.codecs.wire import FLAG_LOCAL16, HEADER_SIZE

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

    def wire_bytes(self, numel: int) -> int:
        return HEADER_SIZE + self._kept(numel) * (self.bits // 8 + (2 if self.local16 else 4))

    def _bucket_of_entry(self, numel: int, device) -> torch.Tensor:
        nb = num_buckets(numel, self.bucket)
        per = torch.full((nb,), self.k, dtype=torch.int64, device=device)
        if nb:
            per[-1] = min(self.k, numel - (nb - 1) * self.bucket)
        return torch.repeat_interleave(torch.arange(nb, device=device), per)

    def _encode(self, x, generator):
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
            raise ValueError("codec 'topk': input has NaN or Inf")
        if self.local16:
            return self._assemble(x, [vals.to(self.value_dtype), local.to(torch.uint16)], FLAG_LOCAL16, k)
        glob = local + self._bucket_of_entry(n, x.device) * b
        return self._assemble(x, [vals.to(self.value_dtype), glob.to(torch.int32)], 0, k)

    def _decode(self, header, reader):
        expected_flags = FLAG_LOCAL16 if self.local16 else 0
        if header.flags != expected_flags:
            raise WireFormatError(f"topk: flags 0x{header.flags:02x}, expected 0x{expected_flags:02x}")
        if header.aux != self.k:
            raise WireFormatError(f"topk: message has k={header.aux}, this codec uses k={self.k}")
        n = header.numel
        kept = self._kept(n)
        vals = reader.take(kept, self.value_dtype, "values")
        if self.local16:
            local = reader.take(kept, torch.uint16, "indices").to(torch.int64)
            if kept and int(local.max()) >= self.bucket:
                raise WireFormatError(f"topk: a bucket-local index is >= bucket size {self.bucket}")
            idx = local + self._bucket_of_entry(n, local.device) * self.bucket
        else:
            idx = reader.take(kept, torch.int32, "indices")
        # strictly increasing globally <=> sorted, unique and inside its own bucket
        idx = check_increasing_indices(idx, n, self.name)
        out = torch.zeros(n, dtype=torch.float32, device=vals.device)
        out[idx] = vals.to(torch.float32)
        return out
