"""The compiled fast path of one dense bucketed codec: the engine's encode-with-error-feedback and
decode-combine, producing exactly the bytes and floats of the torch reference (``qtrain.codecs``).

Where the kernel cannot do a case in one pass it says so and hands over to the reference:
- ``threshold`` picks the sparse layout when it is smaller: the kernel writes the dense codes and
  does the error feedback in its one pass, then the sparse message is built from those codes
  (one more pass over n/4 bytes of codes);
- a set of uplinks that holds a sparse-layout message is accumulated by the reference, in worker
  order, so the sum stays bit for bit the same.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qtrain.codecs import Codec, CounterStream, WireFormatError, wire
from qtrain.codecs.base import DEFAULT_STREAM, check_decoded_scales, num_buckets
from qtrain.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from qtrain.codecs.errors import NonFiniteInput
from qtrain.codecs.layout import payload_bytes
from qtrain.codecs.wire import FLAG_SPARSE
from qtrain.kernels import cpu_dense as K
from qtrain.kernels.codec_base import (
    KIND_SIGN,
    KIND_THRESHOLD,
    KIND_UNIFORM,
    MODES,
    KernelCodec,
    as_numpy,
    kernel_kind,
)
from qtrain.kernels.fusion import AdamFusion

CHUNK_ELEMENTS = 8192  # elements per parallel task (rounded to whole bytes of codes and buckets)


def _chunk(bucket: int) -> int:
    unit = math.lcm(8, bucket)
    return max(unit, CHUNK_ELEMENTS // unit * unit)


class DenseKernelCodec(KernelCodec):
    """Fast path of ``codec`` (sign, uniform/ternary, threshold) on CPU tensors."""

    fuses_adam = True

    def __init__(self, codec: Codec):
        kind = kernel_kind(codec)
        if kind is None:
            raise ValueError(f"codec '{codec.name}' has no dense kernel")
        super().__init__(codec)
        self.kind = kind
        self.bucket = codec.bucket
        self.chunk = _chunk(codec.bucket)
        self.bits = 2 if kind == KIND_THRESHOLD else codec.bits
        self.levels = getattr(codec, "levels", 1)
        self.units_of, self.top_of = K.unit_table(kind, self.bits, self.levels)

    # ------------------------------------------------------------------ encode
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
        adam: AdamFusion | None = None,
    ) -> tuple[torch.Tensor, tuple[float, float, float]]:
        """One pass: v = p + alpha*e; message of Q(v) (into ``out`` when given); e <- beta*e + p -
        Q(v); target -= Q(v); values = Q(v). Returns the message and (||Q(v)-v||^2, ||v||^2,
        ||e||^2 or None without ``e``) as float64 sums, what ``SegmentStats.add_sums`` takes.
        With ``adam``, ``p`` is the gradient and the local Adam step (moments updated in place)
        produces the p above, in the same pass."""
        codec, n = self.codec, p.numel()
        rng = rng or DEFAULT_STREAM
        flags, aux = (0, self.levels) if self.kind == KIND_UNIFORM else (0, 0)
        msg = self._frame(p, out, wire.HEADER_SIZE + payload_bytes(codec.sections(n, flags, aux)))
        nb = num_buckets(n, self.bucket)
        stats, bad = self._encode(msg, nb, p, e, alpha, beta, target, values, rng, adam)
        first_bad = bad[bad >= 0]
        if first_bad.size:
            raise NonFiniteInput(
                f"codec '{codec.name}': input has NaN or Inf in bucket {int(first_bad.min())}"
            )
        err_sq, ref_sq, ef_sq, kept = (float(x) for x in stats.sum(axis=0))
        if self.kind == KIND_THRESHOLD and self._sparse_wins(n, int(kept)):
            msg = self._rewrite_sparse(msg, n, nb, int(kept))
        else:
            wire.finish_message(msg, codec.codec_id, codec.bits, flags, n, self.bucket, aux)
        return msg, (err_sq, ref_sq, ef_sq if e is not None else None)

    def _encode(self, msg, nb, p, e, alpha, beta, target, values, rng, adam):
        """Run the encode kernel into the message's payload; returns (stats, bad) as numpy:
        per-chunk (err_sq, ref_sq, ef_sq, kept) and per-chunk first bad bucket (or -1)."""
        n = p.numel()
        scales_at = wire.HEADER_SIZE
        frame = msg.numpy()
        aligned = frame.ctypes.data % 4 == 0
        scales = (
            frame[scales_at : scales_at + 4 * nb].view(np.float32) if aligned else np.empty(nb, np.float32)
        )
        codes = frame[scales_at + 4 * nb :]
        nchunks = -(-n // self.chunk)
        stats = np.zeros((nchunks, 4), dtype=np.float64)
        bad = np.empty(nchunks, dtype=np.int64)
        c = self.codec
        K.encode(
            self.kind,
            as_numpy(p),
            as_numpy(e),
            np.float32(alpha),
            np.float32(beta),
            as_numpy(target),
            as_numpy(values),
            self.bucket,
            self.chunk,
            self.levels,
            getattr(c, "norm", "linf") == "l2",
            bool(c.stochastic),
            np.float32(getattr(c, "kappa", 0.0)),
            getattr(c, "reference", "linf") == "linf",
            np.uint64(rng.key),
            np.uint64(rng.step),
            rng.offset,
            self.bits,
            scales,
            codes,
            stats,
            bad,
            *_adam_args(adam, n),
        )
        if not aligned:
            frame[scales_at : scales_at + 4 * nb] = scales.view(np.uint8)
        return stats, bad

    def _sparse_wins(self, n: int, kept: int) -> bool:
        layout = self.codec.layout
        return layout == "sparse" or (layout == "auto" and self.codec._sparse_is_smaller(n, kept))

    def _rewrite_sparse(self, msg: torch.Tensor, n: int, nb: int, kept: int) -> torch.Tensor:
        """The sparse layout of a threshold message from the dense codes the kernel wrote."""
        payload = msg[wire.HEADER_SIZE :]
        scales = payload[: 4 * nb].clone().view(torch.float32)
        codes = unpack_bits(payload[4 * nb :], 2, n)
        idx = torch.nonzero(codes != 1).view(-1)
        positive = (codes[idx] == 2).to(torch.uint8)
        arrays = [scales, idx.to(torch.int32), pack_bits(positive, 1)]
        size = wire.HEADER_SIZE + sum(a.numel() * a.element_size() for a in arrays)
        if size > msg.numel():  # layout="sparse" forced with more kept entries than the dense size
            msg = torch.empty(size, dtype=torch.uint8, device=msg.device)
        c = self.codec
        return wire.write_message(msg[:size], c.codec_id, c.bits, FLAG_SPARSE, n, c.bucket, kept, arrays)

    # ------------------------------------------------------------------ decode
    def decode_combine(self, messages: list[torch.Tensor], out: torch.Tensor, mode: str) -> torch.Tensor:
        """``mode`` "mean": out = (sum of the decoded messages, in list order) / len(messages);
        "subtract": out -= decode(messages[0]); "add": out += decode(messages[0]); "set": out =
        decode(messages[0]). Bit for bit what the reference's decode / decode_add_ give. Raises
        WireFormatError on a bad message."""
        codec, n = self.codec, out.numel()
        headers = self._read_all(messages, n, mode)
        if any(h.flags for h, _, _ in headers):  # threshold's sparse layout: the reference, in order
            return self._reference_combine(messages, out, mode)
        name = "signs" if self.kind == KIND_SIGN else "codes"
        sections = [(a["scales"], a[name]) for _, a, _ in headers]
        for scales, _ in sections:
            check_decoded_scales(scales, codec.name)
        used = (n * self.bits) % 8
        if used and n and any(int(codes[-1]) >> used for _, codes in sections):
            raise WireFormatError("nonzero padding bits after the last code")
        if self._decode(sections, n, out, mode):
            top = 2 * self.levels if self.kind == KIND_UNIFORM else 2
            raise WireFormatError(f"{codec.name}: a code is outside 0..{top}")
        return out

    def _decode(self, sections, n, out, mode) -> bool:
        """Run the decode kernel; True when a code is out of range."""
        nb = num_buckets(n, self.bucket)
        scales = np.stack([s.numpy() for s, _ in sections]) if n else np.zeros((len(sections), 0))
        codes = _rows([c for _, c in sections], packed_nbytes(n, self.bits))
        bad = np.zeros(-(-n // self.chunk), dtype=np.int64)
        K.decode(
            self.kind,
            codes,
            scales.astype(np.float32, copy=False).reshape(len(sections), nb),
            self.levels,
            self.bits,
            self.bucket,
            self.chunk,
            n,
            as_numpy(out),
            MODES[mode],
            self.units_of,
            self.top_of,
            bad,
        )
        return bool(bad.any())


def _adam_args(adam: AdamFusion | None, n: int) -> tuple:
    if adam is None:
        empty = np.empty(0, dtype=np.float32)
        return False, empty, empty, empty, empty, np.zeros(9, np.float32), False
    for t in (adam.m, adam.v, adam.vmax, adam.params):
        if t is not None and t.numel() != n:
            raise ValueError(f"Adam fusion: a state tensor holds {t.numel()} elements, not {n}")
    c = adam.constants
    ac = np.array(
        [
            c.beta1,
            c.one_minus_beta1,
            c.beta2,
            c.one_minus_beta2,
            c.step_size,
            c.root_bc2,
            c.root_bc2_sq,
            c.eps,
            adam.weight_decay,
        ],
        dtype=np.float32,
    )
    wd = adam.params if adam.weight_decay else None
    return (
        True,
        as_numpy(adam.m),
        as_numpy(adam.v),
        as_numpy(adam.vmax),
        as_numpy(wd),
        ac,
        bool(c.eps_inside_sqrt),
    )


def strided_rows(arrays: list, count: int) -> np.ndarray | None:
    """N sections (tensors or numpy arrays of one dtype, ``count`` items each) as one (N, count)
    strided view when they sit at equal distances in memory (the transport's receive rows, one
    section each), else None."""
    views = [a.numpy() if isinstance(a, torch.Tensor) else a for a in arrays]
    if len(views) == 1:
        return views[0].reshape(1, count)
    item = views[0].itemsize
    addr = [v.ctypes.data for v in views]
    stride = addr[1] - addr[0]
    if stride >= count * item and all(addr[i] - addr[0] == i * stride for i in range(len(addr))):
        # row i starts exactly at views[i] (checked above) and spans its items: only those are read
        return np.lib.stride_tricks.as_strided(views[0], shape=(len(views), count), strides=(stride, item))
    return None


def _rows(arrays: list, count: int) -> np.ndarray:
    """:func:`strided_rows`, or a stacked copy (cheap for packed codes)."""
    rows = strided_rows(arrays, count)
    return rows if rows is not None else np.stack([a.numpy() for a in arrays])
