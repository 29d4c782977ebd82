"""Bit packing of integer codes of width 1..8 into bytes, LSB-first.

Layout: code ``i`` occupies stream bits ``[i*b, (i+1)*b)``; stream bit ``k`` is bit ``k % 8``
(value ``1 << (k % 8)``) of byte ``k // 8``. Bit ``j`` of a code goes to stream bit ``i*b + j``.
For ``b = 1`` this is exactly ``numpy.packbits(..., bitorder="little")``. Unused high bits of the
last byte are zero, and :func:`unpack_bits` rejects a message where they are not.

Everything is plain torch integer arithmetic, so CPU and CUDA tensors give identical bytes.
"""

from __future__ import annotations

import torch

from qtrain.codecs.errors import WireFormatError


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits each."""
    return (numel * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bit width must be in 1..8, got {bits}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D ``uint8`` tensor of codes (each ``< 2**bits``) into a 1-D ``uint8`` tensor."""
    _check_bits(bits)
    codes = codes.reshape(-1)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    n = codes.numel()
    nbytes = packed_nbytes(n, bits)
    if bits == 8:
        return codes.contiguous().clone()
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-n) % per
        c = torch.nn.functional.pad(codes, (0, pad)).view(-1, per)
        out = c[:, 0].clone()
        for j in range(1, per):
            out |= c[:, j] << (j * bits)
        return out
    # widths 3, 5, 6, 7: 8 codes fill exactly `bits` bytes; assemble them in an int64 word
    pad = (-n) % 8
    c = torch.nn.functional.pad(codes, (0, pad)).view(-1, 8).to(torch.int64)
    word = c[:, 0].clone()
    for j in range(1, 8):
        word |= c[:, j] << (j * bits)
    out = torch.empty((c.shape[0], bits), dtype=torch.uint8, device=codes.device)
    for k in range(bits):
        out[:, k] = ((word >> (8 * k)) & 0xFF).to(torch.uint8)
    return out.view(-1)[:nbytes]


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` codes as a 1-D ``uint8`` tensor.

    Raises :class:`WireFormatError` when ``packed`` has the wrong length or nonzero padding bits.
    """
    _check_bits(bits)
    nbytes = packed_nbytes(numel, bits)
    if packed.numel() != nbytes:
        raise WireFormatError(
            f"packed codes hold {packed.numel()} bytes, {numel} codes of {bits} bits need {nbytes}"
        )
    used = (numel * bits) % 8
    if used and int(packed[-1]) >> used:
        raise WireFormatError("nonzero padding bits after the last code")
    if bits == 8:
        return packed.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        per = 8 // bits
        out = torch.empty((nbytes, per), dtype=torch.uint8, device=packed.device)
        for j in range(per):
            out[:, j] = (packed >> (j * bits)) & mask
        return out.view(-1)[:numel]
    groups = (numel + 7) // 8
    p = torch.nn.functional.pad(packed, (0, groups * bits - nbytes)).view(groups, bits).to(torch.int64)
    word = p[:, 0].clone()
    for k in range(1, bits):
        word |= p[:, k] << (8 * k)
    out = torch.empty((groups, 8), dtype=torch.uint8, device=packed.device)
    for j in range(8):
        out[:, j] = ((word >> (j * bits)) & mask).to(torch.uint8)
    return out.view(-1)[:numel]
