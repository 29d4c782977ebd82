"""The GPU fast path of a dense codec: :class:`DenseKernelCodec`'s interface (and its message
handling), with the Triton kernels of ``triton_dense`` doing the passes over the data."""

from __future__ import annotations

import numpy as np
import torch

from qtrain.codecs import Codec
from qtrain.codecs.base import num_buckets
from qtrain.codecs.wire import HEADER_SIZE
from qtrain.kernels import triton_dense as T
from qtrain.kernels.codec_base import KIND_THRESHOLD, MODES, kernel_kind
from qtrain.kernels.dense_codec import DenseKernelCodec


def triton_supports(codec: Codec) -> bool:
    """Dense codecs whose buckets fill whole bytes of codes of 1, 2, 4 or 8 bits."""
    kind = kernel_kind(codec)
    if kind is None:
        return False
    bits = 2 if kind == KIND_THRESHOLD else codec.bits
    return bits in (1, 2, 4, 8) and codec.bucket * bits % 8 == 0 and codec.bucket <= T.MAX_BUCKET


class TritonDenseCodec(DenseKernelCodec):
    """Fast path of ``codec`` on GPU tensors (or CPU tensors under ``TRITON_INTERPRET=1``). The
    local Adam step is not fused here: the engine runs the torch rule first (``fuses_adam``)."""

    fuses_adam = False

    def __init__(self, codec: Codec):
        if not triton_supports(codec):
            raise ValueError(f"codec {codec!r} has no Triton kernel")
        super().__init__(codec)
        self.block = 1 << max(0, codec.bucket - 1).bit_length()

    def _encode(self, msg, nb, p, e, alpha, beta, target, values, rng, adam):
        if adam is not None:
            raise ValueError("the Triton kernels do not fuse the Adam step")
        n, dev = p.numel(), p.device
        payload = msg[HEADER_SIZE:]
        aligned = payload.data_ptr() % 4 == 0
        scales = payload[: 4 * nb].view(torch.float32) if aligned else torch.empty(nb, device=dev)
        codes = payload[4 * nb :]
        stats = torch.zeros(4 * nb, dtype=torch.float32, device=dev)
        bad = torch.zeros(nb, dtype=torch.int32, device=dev)
        dummy = torch.empty(1, dtype=torch.float32, device=dev)
        c = self.codec
        if nb:
            T.encode_kernel[(nb,)](
                p,
                dummy if e is None else e,
                dummy if target is None else target,
                dummy if values is None else values,
                scales,
                codes,
                stats,
                bad,
                n,
                float(alpha),
                float(beta),
                self.levels,
                float(getattr(c, "kappa", 0.0)),
                rng.key,
                rng.step & 0xFFFFFFFF,
                rng.step >> 32,
                rng.offset,
                KIND=self.kind,
                BUCKET=self.bucket,
                P=self.block,
                LOG2P=self.block.bit_length() - 1,
                BITS=self.bits,
                HAS_E=e is not None,
                HAS_T=target is not None,
                HAS_V=values is not None,
                L2=getattr(c, "norm", "linf") == "l2",
                STOCHASTIC=bool(c.stochastic),
                LINF_REFERENCE=getattr(c, "reference", "linf") == "linf",
                enable_fp_fusion=False,
            )
        if not aligned:
            payload[: 4 * nb].copy_(scales.view(torch.uint8))
        flags = bad.cpu().numpy()
        first_bad = np.where(flags > 0, np.arange(nb), -1)
        return stats.view(nb, 4).double().cpu().numpy(), first_bad

    def _decode(self, sections, n, out, mode) -> bool:
        nb = num_buckets(n, self.bucket)
        if not nb:
            return False
        dev = out.device
        scales = torch.stack([s.to(dev) for s, _ in sections]).contiguous()
        codes = torch.stack([c.to(dev) for _, c in sections]).contiguous()
        bad = torch.zeros(nb, dtype=torch.int32, device=dev)
        T.decode_kernel[(nb,)](
            codes,
            codes.shape[1],
            scales,
            out,
            bad,
            n,
            len(sections),
            self.levels,
            KIND=self.kind,
            BUCKET=self.bucket,
            P=self.block,
            BITS=self.bits,
            MODE=MODES[mode],
            enable_fp_fusion=False,
        )
        return bool(bad.any())
