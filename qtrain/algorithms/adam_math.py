"""The Adam moment update and step direction shared by the server-side and worker-side Adam rules.

Kingma & Ba (ICLR 2015), Algorithm 1, with the options the quantized-Adam papers leave open:

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    vmax_t = max(vmax_{t-1}, v_t)                     (amsgrad; Reddi et al., ICLR 2018)
    mhat = m_t / (1 - beta1^t),  vhat = v_t / (1 - beta2^t)    (bias_correction, else mhat=m, vhat=v)
    p_t = lr * mhat / (sqrt(vhat) + eps)                 (eps_inside_sqrt: lr * mhat / sqrt(vhat + eps))
"""

from __future__ import annotations

import math

import torch

from qtrain.algorithms.base import State, zeros


def init_moments(numel: int, device: torch.device, amsgrad: bool) -> State:
    state = {"m": zeros(numel, device), "v": zeros(numel, device)}
    if amsgrad:
        state["vmax"] = zeros(numel, device)
    return state


def adam_direction(g: torch.Tensor, state: State, step: int, hp) -> torch.Tensor:
    m, v = state["m"], state["v"]
    m.mul_(hp.beta1).add_(g, alpha=1 - hp.beta1)
    v.mul_(hp.beta2).addcmul_(g, g, value=1 - hp.beta2)
    if "vmax" in state:
        torch.maximum(state["vmax"], v, out=state["vmax"])
        v = state["vmax"]
    if hp.bias_correction:
        step_size = hp.lr / (1 - hp.beta1**step)
        root_bc2 = math.sqrt(1 - hp.beta2**step)
    else:
        step_size, root_bc2 = hp.lr, 1.0
    if hp.eps_inside_sqrt:
        denom = (v / root_bc2**2).add_(hp.eps).sqrt_()
    else:
        denom = (v.sqrt() / root_bc2).add_(hp.eps)
    return m.div(denom).mul_(step_size)
