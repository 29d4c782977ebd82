"""``qrda-adagrad``: quantized AdaGrad with regularized dual averaging and l1 regularization
(Xu et al., 2022; the RDA update of Duchi, Hazan, Singer, JMLR 2011, Sec. 5.1, diagonal, l1).

Workers send threshold-quantized gradients Q(g_i) (no error feedback by default). The server keeps
the running sum of the averaged gradients S_t = sum_{tau <= t} g_tau and the AdaGrad accumulator:

    g = (1/N) sum_i Q(g_i),   S <- S + g,   H = delta + sqrt(G), G <- G + g^2
    x_{t+1} = sign(-S) * (lr / H) * max(|S| - lambda * t, 0)     (per coordinate)

(Duchi et al. write it with the average gbar_t = S_t / t as sign(-gbar) * (lr t / H) * [|gbar| -
lambda]_+, which is the same.) The iterate is anchored at the origin, so the initial weights only
matter through the first gradient: RDA is meant for convex (e.g. l1-logistic) models. The new
sparse model goes out on the downlink (codec ``sparse``, lossless).
"""

from __future__ import annotations

import torch

from qtrain.algorithms.adagrad import AdaGradServer, zeros


class QRDAAdaGrad(AdaGradServer):
    name = "qrda-adagrad"

    def init_server_state(self, numel, device):
        state = super().init_server_state(numel, device)
        state["grad_sum"] = zeros(numel, device)
        return state

    def server_update(self, mean, master, state, step):
        hp = self.hp
        h = self.accumulate(mean, state)
        s = state["grad_sum"].add_(mean)
        magnitude = (s.abs() - hp.l1 * step).clamp_(min=0)
        return torch.sign(-s) * magnitude * (hp.lr / h)
