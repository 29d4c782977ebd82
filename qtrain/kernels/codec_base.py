"""What every compiled fast path of a codec does around its kernels (kept free of numba and
triton): the kernel families and combine modes, the checks of an encoder's input and output frame,
the decoder's reading of N messages, and the torch reference it hands over to where it cannot help.
"""

from __future__ import annotations

import numpy as np
import torch

from qtrain.codecs import Codec, WireFormatError
from qtrain.codecs.base import check_frame
from qtrain.codecs.uniform import UniformCodec

KIND_SIGN, KIND_UNIFORM, KIND_THRESHOLD = 0, 1, 2
MODE_MEAN, MODE_SUBTRACT, MODE_SET, MODE_ADD = 0, 1, 2, 3
MODES = {"mean": MODE_MEAN, "subtract": MODE_SUBTRACT, "set": MODE_SET, "add": MODE_ADD}


def kernel_kind(codec: Codec) -> int | None:
    """The bucketed kernel family of ``codec``, or None when it has none."""
    if codec.name == "sign":
        return KIND_SIGN
    if isinstance(codec, UniformCodec):
        return KIND_UNIFORM
    if codec.name == "threshold":
        return KIND_THRESHOLD
    return None


def as_numpy(t: torch.Tensor | None, dtype=np.float32) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor; an empty array for None (the kernels' 'absent')."""
    if t is None:
        return np.empty(0, dtype=dtype)
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("the numba kernels work on contiguous CPU tensors")
    return t.numpy()


class KernelCodec:
    """The parts of ``encode_ef``/``decode_combine`` that do not depend on the kernel."""

    fuses_adam = False  # whether encode_ef(adam=...) runs the local Adam step inside the kernel

    def __init__(self, codec: Codec):
        self.codec = codec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.codec!r})"

    def _frame(self, p: torch.Tensor, out: torch.Tensor | None, size: int) -> torch.Tensor:
        """Check the encoder's input; the ``size``-byte message buffer (``out``'s head, or new)."""
        name = self.codec.name
        if p.dtype != torch.float32 or p.dim() != 1:
            raise TypeError(f"codec '{name}' kernel encodes 1-D float32 tensors, got {p.dtype}")
        if out is None:
            return torch.empty(size, dtype=torch.uint8, device=p.device)
        check_frame(name, out, size)
        return out[:size]

    def _read_all(self, messages: list[torch.Tensor], n: int, mode: str) -> list:
        """Validate every message (header, CRC, layout) and its element count; their sections."""
        if mode not in MODES:
            raise ValueError(f"decode_combine: mode must be one of {list(MODES)}, got {mode!r}")
        if mode != "mean" and len(messages) != 1:
            raise ValueError(f"decode_combine: mode {mode!r} takes one message, got {len(messages)}")
        headers = [self.codec._read(m) for m in messages]
        if any(h.numel != n for h, _, _ in headers):
            raise WireFormatError(f"{self.codec.name}: a message holds a different element count than {n}")
        return headers

    def _reference_combine(self, messages, out, mode):
        """The torch reference's decode_combine, for the cases a kernel hands over."""
        codec = self.codec
        if mode == "mean":
            out.zero_()
            for m in messages:
                codec.decode_add_(m, out)
            return out.div_(len(messages))
        if mode == "set":
            return codec.decode(messages[0], out=out)
        if mode == "add":
            return codec.decode_add_(messages[0], out)
        return out.sub_(codec.decode(messages[0]))
