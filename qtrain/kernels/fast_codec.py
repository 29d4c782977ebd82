"""The public codec API on the compiled fast path: ``qtrain.get_codec(name, **params)`` returns a
:class:`FastCodec`, whose ``encode``, ``quantize``, ``decode`` and ``decode_add_`` run the numba
kernels on CPU tensors (Triton on CUDA) where the codec has one, and the torch reference
(``qtrain.codecs``) everywhere else (and, under ``kernels="auto"``, for the float codecs, which
torch encodes as fast). Both give the same bytes and the same floats
(``tests/test_fast_codec.py``), so the choice is one of speed only.

    codec = qtrain.get_codec("uniform", bits=2)       # the fast path where it applies
    codec.path("cpu")                                 # 'numba' (or 'torch' where none applies)
    codec.reference                                   # the torch reference codec itself
    qtrain.get_codec("uniform", bits=2, kernels="torch")   # the reference, by name
    qtrain.codecs.get_codec("uniform", bits=2)             # the same reference
"""

from __future__ import annotations

import torch

from qtrain.codecs import Codec
from qtrain.codecs import get_codec as reference_codec
from qtrain.codecs.base import as_flat_float, check_frame, decodes_unasked
from qtrain.codecs.entropy import EntropyCoded
from qtrain.codecs.errors import WireFormatError
from qtrain.codecs.floats import Bf16Codec, Fp16Codec, NoneCodec
from qtrain.codecs.wire import read_header

FLOAT_CODECS = (NoneCodec, Fp16Codec, Bf16Codec)


def _same_device(buffer, tensor: torch.Tensor) -> bool:
    """Whether ``buffer`` (None: yes) lives on ``tensor``'s device: the kernels read and write one
    device's memory, the reference also copies across (a CUDA gradient into a host send frame)."""
    return buffer is None or (isinstance(buffer, torch.Tensor) and buffer.device == tensor.device)


def get_codec(name: str, *, kernels: str = "auto", **params) -> Codec | FastCodec:
    """The codec ``name`` with ``params`` (what :func:`qtrain.codecs.get_codec` takes), on the
    kernels ``kernels`` chooses: ``auto`` (the compiled path wherever one is installed and
    applies), ``numba`` or ``triton`` (that compiler, or a ValueError when it is missing), or
    ``torch`` (the reference codec itself, a :class:`qtrain.codecs.Codec`)."""
    from qtrain.kernels import KERNEL_CHOICES

    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    codec = reference_codec(name, **params)
    return codec if kernels == "torch" else FastCodec(codec, kernels)


class FastCodec:
    """``reference`` (a :class:`qtrain.codecs.Codec`) with its encode and decode calls on the
    compiled kernels. Everything else (``name``, ``bits``, ``wire_bytes``, ``params``, ...) is
    the reference's own."""

    def __init__(self, reference: Codec, kernels: str = "auto"):
        self.reference = reference
        self.kernels = kernels
        self._paths: dict[torch.device, object] = {}

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("reference", "kernels"):  # e.g. while unpickling
            raise AttributeError(name)
        return getattr(self.reference, name)

    def __repr__(self) -> str:
        return f"FastCodec({self.reference!r}, kernels={self.kernels!r})"

    def __eq__(self, other: object) -> bool:
        return self.reference == (other.reference if isinstance(other, FastCodec) else other)

    def __hash__(self) -> int:
        return hash(self.reference)

    def __getstate__(self) -> dict:
        return {"reference": self.reference, "kernels": self.kernels}  # kernel codecs: rebuilt on use

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["reference"], state["kernels"])

    def _kernel(self, device: torch.device):
        """The compiled codec for tensors on ``device``, or None where the reference runs: always
        for the float codecs (none, fp16, bf16), whose plain encode and decode torch does in one
        pass of its own, as fast as the kernel or faster (docs/benchmarks.md); their kernel pays
        off inside the engine, fused with error feedback and the N-message mean."""
        if device not in self._paths:
            from qtrain.kernels import kernel_codec

            inner = getattr(self.reference, "inner", self.reference)  # an entropy stage's codec
            plain_float = isinstance(inner, FLOAT_CODECS) and self.kernels == "auto"
            self._paths[device] = None if plain_float else kernel_codec(self.reference, device, self.kernels)
        return self._paths[device]

    def path(self, device="cpu") -> str:
        """What runs for tensors on ``device``: 'numba', 'triton' or 'torch' (the reference)."""
        device = torch.device(device)
        if self._kernel(device) is None:
            return "torch"
        return "triton" if device.type == "cuda" else "numba"

    # ------------------------------------------------------------------ encoding
    def encode(self, x: torch.Tensor, rng=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`qtrain.codecs.Codec.encode`, byte for byte."""
        return self.quantize(x, rng, out, want_values=False)[0]

    def quantize(self, x, rng=None, out=None, want_values: bool = True):
        """:meth:`qtrain.codecs.Codec.quantize`: (message, Q(x) as float32 or None)."""
        ref = self.reference
        x = as_flat_float(x, ref.name)
        fast = self._kernel(x.device)
        if fast is None or not _same_device(out, x):
            return ref.quantize(x, rng, out, want_values)
        values = torch.empty_like(x) if want_values else None
        rng = rng if ref.stochastic else None  # a deterministic codec never reads it
        if out is None or ref.fixed_size or isinstance(ref, EntropyCoded):
            packed, _ = fast.encode_ef(x, rng=rng, out=out, values=values)
            return packed, values
        # threshold: the kernel needs a dense frame and may choose the (smaller or larger) sparse
        # layout; the reference checks ``out`` against the message it chose, and writes it there
        packed, _ = fast.encode_ef(x, rng=rng, values=values)
        check_frame(ref.name, out, packed.numel())
        return out[: packed.numel()].copy_(packed), values

    # ------------------------------------------------------------------ decoding
    def decode(self, packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`qtrain.codecs.Codec.decode`, bit for bit (the same checks, the same errors)."""
        if not isinstance(packed, torch.Tensor):
            return self.reference.decode(packed, out)  # which refuses it, in its words
        fast = self._kernel(packed.device)
        if fast is None or (out is not None and (not out.is_contiguous() or not _same_device(out, packed))):
            return self.reference.decode(packed, out)
        n = read_header(packed, check_crc=False).numel  # its CRC and the rest: decode_combine's
        if out is None:
            if not decodes_unasked(n, packed):
                return self.reference.decode(packed)  # which refuses it, in its words
            out = torch.empty(n, dtype=torch.float32, device=packed.device)
        elif out.dim() != 1 or out.numel() != n or out.dtype != torch.float32:
            return self.reference.decode(packed, out)  # which raises its ValueError
        return fast.decode_combine([packed], out, "set")

    def decode_add_(self, packed: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """``acc += decode(packed)``: :meth:`qtrain.codecs.Codec.decode_add_`, bit for bit."""
        if not isinstance(packed, torch.Tensor) or not isinstance(acc, torch.Tensor):
            return self.reference.decode_add_(packed, acc)
        fast = self._kernel(acc.device)
        if fast is None or not acc.is_contiguous() or not _same_device(packed, acc):
            return self.reference.decode_add_(packed, acc)
        try:
            n = read_header(packed, check_crc=False).numel
        except WireFormatError:
            return self.reference.decode_add_(packed, acc)  # which raises, in its words
        if acc.dim() != 1 or acc.numel() != n or acc.dtype != torch.float32:
            return self.reference.decode_add_(packed, acc)
        return fast.decode_combine([packed], acc, "add")
