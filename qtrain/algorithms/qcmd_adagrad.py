"""``qcmd-adagrad``: quantized AdaGrad with composite mirror descent and l1 regularization
(Xu et al., 2022; the CMD update of Duchi, Hazan, Singer, JMLR 2011, Sec. 5.1, diagonal, l1).

Workers send threshold-quantized gradients Q(g_i) (no error feedback by default). The server:

    g = (1/N) sum_i Q(g_i)
    H = delta + sqrt(G),  G <- G + g^2                          (adagrad.AdaGradServer)
    eta_t = lr / (1 + (t - 1) * lr_decay)
    z = x - eta_t * g / H
    x <- sign(z) * max(|z| - lambda * eta_t / H, 0)           (per coordinate)

and sends the new (sparse) model on the downlink (codec ``sparse``, lossless). With lambda = 0 this
is exactly ``torch.optim.Adagrad(lr, lr_decay, eps=delta)`` applied to g.
"""

from __future__ import annotations

import torch

from qtrain.algorithms.adagrad import AdaGradServer


class QCMDAdaGrad(AdaGradServer):
    name = "qcmd-adagrad"

    def server_update(self, mean, master, state, step):
        hp = self.hp
        h = self.accumulate(mean, state)
        eta = hp.lr / (1 + (step - 1) * hp.lr_decay)
        z = master.addcdiv(mean, h, value=-eta)
        if not hp.l1:
            return z
        shrink = (hp.l1 * eta) / h
        return torch.sign(z) * (z.abs() - shrink).clamp_(min=0)
