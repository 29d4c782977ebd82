"""Divergence: training stops at the first non-finite loss, gradient, update or parameter, with
``diverged at step N: what`` and a non-zero exit, before anything non-finite is checkpointed.

The checks ride on numbers the step computes anyway: the loss (a scalar), and the sums of squares
the codecs return with each message (||v||^2 of what was quantized, in float64 in the kernels).
Only when such a sum is not finite is the vector itself scanned, to tell a real NaN/Inf from a
float32 norm that overflowed. The quantizing codecs refuse non-finite input themselves
(``NonFiniteInput``), which the engines turn into the same message. Checkpoints scan every tensor
they store before writing (:func:`require_finite`), which is rare enough to be cheap.
"""

from __future__ import annotations

import math

import torch


class Diverged(RuntimeError):
    """Training diverged: ``diverged at step N: what``."""

    def __init__(self, step: int, what: str):
        super().__init__(f"diverged at step {step}: {what}")
        self.step = step


class OutOfRange(Diverged):
    """A codec's output overflowed although its input was finite: the cause is the codec's range
    (fp16 holds |x| <= 65504), not the learning rate."""

    def __init__(self, step: int, what: str):
        RuntimeError.__init__(self, f"at step {step}: {what}")
        self.step = step


RANGES = {"fp16": 65504.0, "bf16": 3.3895e38}


def check_codec_range(
    step: int, codec: str, err_sq: float, ref_sq: float, what: str, v: torch.Tensor
) -> None:
    """``err_sq`` = ||Q(v) - v||^2 of a finite ``v``: not finite means Q(v) overflowed."""
    if math.isfinite(err_sq) or not math.isfinite(ref_sq):
        return
    largest = float(v.abs().max()) if v.numel() else 0.0
    limit = RANGES.get(codec)
    bound = f" > {limit:g}, the largest {codec} value" if limit is not None and largest > limit else ""
    hint = (
        "use codec bf16, which has float32's range, or scale the loss down"
        if codec == "fp16"
        else "scale the loss down"
    )
    raise OutOfRange(
        step, f"{what} overflows codec '{codec}': the largest |gradient| is {largest:.4g}{bound} ({hint})"
    )


def non_finite_encode(step: int, codec: str, what: str, exc, *inputs: torch.Tensor | None) -> Diverged:
    """What to raise when codec ``codec`` refused its input as non-finite (``exc``): a divergence
    when one of ``inputs`` (what went into the step) holds NaN or Inf; when they are all finite,
    an ``OutOfRange`` saying that float32 overflowed on the way (a bucket's sum or norm of finite
    values near 3e38 once read "input has NaN or Inf")."""
    present = [v for v in inputs if v is not None]
    if any(not bool(torch.isfinite(v).all()) for v in present):
        return Diverged(step, f"{what} has NaN or Inf ({exc})")
    largest = max((float(v.abs().max()) for v in present if v.numel()), default=0.0)
    return OutOfRange(
        step,
        f"{what} is finite but overflows float32 in codec '{codec}' (a bucket's scale, or the rule's "
        f"output; the largest |input| is {largest:.4g}): scale the loss or the gradients down",
    )


def check_loss(step: int, worker: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise Diverged(step, f"worker {worker}'s training loss is {loss} (lower algorithm.lr?)")


def check_sum(step: int, norm_sq: float, what: str, *vectors: torch.Tensor | None) -> None:
    """``norm_sq`` is a sum of squares of ``vectors``' data: when it is not finite, scan them."""
    if math.isfinite(norm_sq):
        return
    for v in vectors:
        if v is not None and not bool(torch.isfinite(v).all()):
            raise Diverged(step, f"{what} has NaN or Inf (lower algorithm.lr?)")


def require_finite(step: int, tree, path: str = "") -> None:
    """Every floating tensor in the nested dicts/lists ``tree`` finite, or ``Diverged`` naming the
    first that is not (what a checkpoint checks before it is written)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            require_finite(step, value, f"{path}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            require_finite(step, value, f"{path}/{i}")
    elif isinstance(tree, torch.Tensor) and tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
        bad = int((~torch.isfinite(tree)).sum())
        raise Diverged(
            step, f"checkpoint item {path} holds {bad} NaN or Inf values; no checkpoint was written"
        )
