"""The torch reference codecs behind the kernels' interface (``encode_ef``, ``decode_combine``),
so that the engines take one path whatever runs underneath: where no compiled kernel applies
(``runtime.kernels=torch``, topk and sparse, a device without one), this runs the codec's torch
expressions, the ones the kernels are tested against byte for byte.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019; ECQ-SGD's alpha/beta form, Wu et al.
2018), for either direction::

    v = p + alpha * e,    u = Q(v),    e <- beta * e + p - u,    target -= u,    values = u

written here once for the reference, in the same float32 roundings the kernels use (no FMA), so
that a run with the kernels and one without give bit-identical parameters.
"""

from __future__ import annotations

import torch

from qtrain.kernels.codec_base import MODES, KernelCodec


def _norm_sq(x: torch.Tensor) -> float:
    """||x||^2 as a Python float (torch's float32 norm, then squared: a float64 sum of squares
    costs ten times as much on the CPU, and these are statistics, not arithmetic of the run)."""
    return float(torch.linalg.vector_norm(x)) ** 2


class ReferenceCodec(KernelCodec):
    """``codec``'s torch expressions with the interface of a compiled kernel codec."""

    def encode_ef(
        self,
        p: torch.Tensor,
        e: torch.Tensor | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        rng=None,
        out: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        adam=None,
    ) -> tuple[torch.Tensor, tuple[float, float, float | None]]:
        """The message of Q(p + alpha*e) and (||Q(v)-v||^2, ||v||^2, ||e||^2 or None), updating
        ``e``, ``target`` and ``values`` as the docstring of the module says."""
        if adam is not None:
            raise ValueError("the torch reference does not fuse the local Adam step (fuses_adam is False)")
        v = p if e is None else p + (e if alpha == 1 else e * alpha)  # two roundings, no FMA
        packed, u = self.codec.quantize(v, rng, out)
        sums = [_norm_sq(u - v), _norm_sq(v), None]
        if e is not None:
            e.mul_(beta).add_(p).sub_(u)
            sums[2] = _norm_sq(e)
        if target is not None:
            target.sub_(u)
        if values is not None:
            values.copy_(u)
        return packed, tuple(sums)

    def decode_combine(self, messages: list[torch.Tensor], out: torch.Tensor, mode: str) -> torch.Tensor:
        """``mean``: out = the mean of the decoded messages, summed in the order given; ``subtract``:
        out -= decode(message); ``add``: out += decode(message); ``set``: out = decode(message)."""
        if mode not in MODES:
            raise ValueError(f"decode_combine: mode must be one of {list(MODES)}, got {mode!r}")
        if mode != "mean" and len(messages) != 1:
            raise ValueError(f"decode_combine: mode {mode!r} takes one message, got {len(messages)}")
        return self._reference_combine(messages, out, mode)
