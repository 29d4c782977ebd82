"""The compiled fast path of the float codecs (``none``, ``fp16``, ``bf16``): error feedback
around the rounding in one pass, and the N-message decode-accumulate in one pass, with the bytes
and floats of the torch reference (round to nearest even as torch's ``.to`` does it, NaN
patterns included: fp16 sign | 0x7E00, bf16 0xFFFF)."""

from __future__ import annotations

import numpy as np
import torch

from qtrain.codecs import Codec, CounterStream, wire
from qtrain.kernels import cpu_dense as K
from qtrain.kernels.codec_base import MODES, KernelCodec, as_numpy
from qtrain.kernels.dense_codec import strided_rows

CHUNK_ELEMENTS = 8192
FORMATS = {"none": K.FMT_NONE, "fp16": K.FMT_FP16, "bf16": K.FMT_BF16}
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


class FloatKernelCodec(KernelCodec):
    """Fast path of a float codec on CPU tensors (same interface as DenseKernelCodec)."""

    def __init__(self, codec: Codec):
        if codec.name not in FORMATS:
            raise ValueError(f"codec '{codec.name}' is not a float codec")
        super().__init__(codec)
        self.fmt = FORMATS[codec.name]

    def encode_ef(
        self,
        p: torch.Tensor,
        e: torch.Tensor | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        rng: CounterStream | None = None,
        out: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        adam=None,
    ) -> tuple[torch.Tensor, tuple[float, float, float]]:
        """See DenseKernelCodec.encode_ef (``rng`` is unused: the rounding is deterministic)."""
        codec, n = self.codec, p.numel()
        if adam is not None:
            raise ValueError("the float-codec kernel does not fuse the Adam step")
        msg = self._frame(p, out, codec.wire_bytes(n))
        payload = msg.numpy()[wire.HEADER_SIZE :]
        wide = self.fmt == K.FMT_NONE
        item = 4 if wide else 2
        aligned = payload.ctypes.data % item == 0
        dst = (
            payload.view(np.float32 if wide else np.uint16)
            if aligned
            else np.empty(n, np.float32 if wide else np.uint16)
        )
        out32 = dst if wide else np.empty(0, np.float32)
        out16 = np.empty(0, np.uint16) if wide else dst
        stats = np.zeros((-(-n // CHUNK_ELEMENTS), 4), dtype=np.float64)
        K.encode_float(
            self.fmt,
            as_numpy(p),
            as_numpy(e),
            np.float32(alpha),
            np.float32(beta),
            as_numpy(target),
            as_numpy(values),
            HALF_TO_FLOAT,
            out32,
            out16,
            stats,
            CHUNK_ELEMENTS,
        )
        if not aligned:
            payload[:] = dst.view(np.uint8)
        wire.finish_message(msg, codec.codec_id, codec.bits, 0, n, 0, 0)
        err_sq, ref_sq, ef_sq, _ = (float(x) for x in stats.sum(axis=0))
        return msg, (err_sq, ref_sq, ef_sq if e is not None else None)

    def decode_combine(self, messages: list[torch.Tensor], out: torch.Tensor, mode: str) -> torch.Tensor:
        """See DenseKernelCodec.decode_combine."""
        n = out.numel()
        headers = self._read_all(messages, n, mode)
        sections = [a["values"] for _, a, _ in headers]
        if self.fmt == K.FMT_NONE:
            rows32, rows16 = strided_rows([s.numpy() for s in sections], n), np.empty((0, 0), np.uint16)
            rows = rows32
        else:
            bits = [s.view(torch.int16).numpy().view(np.uint16) for s in sections]
            rows32, rows16 = np.empty((0, 0), np.float32), strided_rows(bits, n)
            rows = rows16
        if rows is None:  # scattered messages: copying them together would cost more than the pass
            return self._reference_combine(messages, out, mode)
        K.decode_float(self.fmt, rows32, rows16, HALF_TO_FLOAT, n, CHUNK_ELEMENTS, as_numpy(out), MODES[mode])
        return out
