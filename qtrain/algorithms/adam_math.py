"""The Adam moment update and step direction shared by the server-side and worker-side Adam rules.

Kingma & Ba (ICLR 2015), Algorithm 1, with the options the quantized-Adam papers leave open:

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    vmax_t = max(vmax_{t-1}, v_t)                     (amsgrad; Reddi et al., ICLR 2018)
    mhat = m_t / (1 - beta1^t),  vhat = v_t / (1 - beta2^t)    (bias_correction, else mhat=m, vhat=v)
    p_t = lr * mhat / (sqrt(vhat) + eps)                 (eps_inside_sqrt: lr * mhat / sqrt(vhat + eps))

computed as ``p = (m / (sqrt(v) / sqrt(1 - beta2^t) + eps)) * (lr / (1 - beta1^t))``, the form of
``torch.optim.Adam``. Every operation is one float32 rounding with the float32 constants of
:class:`AdamConstants`, in the order written (two products and a sum, never a fused multiply-add;
a correctly rounded square root), so the fused kernel of ``qtrain.kernels`` repeats it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qtrain.algorithms.base import State, zeros
from qtrain.codecs.base import exact_sqrt


def init_moments(numel: int, device: torch.device, amsgrad: bool) -> State:
    state = {"m": zeros(numel, device), "v": zeros(numel, device)}
    if amsgrad:
        state["vmax"] = zeros(numel, device)
    return state


@dataclass(frozen=True)
class AdamConstants:
    """The scalars of step t (Python floats; every tensor operation rounds them to float32)."""

    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float  # lr / (1 - beta1^t)
    root_bc2: float  # sqrt(1 - beta2^t)
    root_bc2_sq: float  # root_bc2 ** 2 (eps_inside_sqrt divides v by it)
    eps: float
    amsgrad: bool
    eps_inside_sqrt: bool

    @classmethod
    def of(cls, hp, step: int) -> AdamConstants:
        if hp.bias_correction:
            step_size = hp.lr / (1 - hp.beta1**step)
            root_bc2 = math.sqrt(1 - hp.beta2**step)
        else:
            step_size, root_bc2 = hp.lr, 1.0
        return cls(
            hp.beta1,
            1 - hp.beta1,
            hp.beta2,
            1 - hp.beta2,
            step_size,
            root_bc2,
            root_bc2**2,
            hp.eps,
            hp.amsgrad,
            hp.eps_inside_sqrt,
        )


def with_weight_decay(grad: torch.Tensor, params: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """g + wd * x as two roundings (the product, then the sum), as the fused kernel does it."""
    return grad + params * weight_decay if weight_decay else grad


def adam_direction(g: torch.Tensor, state: State, step: int, hp) -> torch.Tensor:
    c = AdamConstants.of(hp, step)
    m, v = state["m"], state["v"]
    m.mul_(c.beta1).add_(g * c.one_minus_beta1)
    v.mul_(c.beta2).add_(torch.mul(g, g).mul_(c.one_minus_beta2))
    if c.amsgrad:
        torch.maximum(state["vmax"], v, out=state["vmax"])
        v = state["vmax"]
    if c.eps_inside_sqrt:
        denom = exact_sqrt((v / c.root_bc2_sq).add_(c.eps))
    else:
        denom = (exact_sqrt(v) / c.root_bc2).add_(c.eps)
    return m.div(denom).mul_(c.step_size)
