"""``adam``: full-precision parameter-server Adam (optionally AMSGrad); the baseline for the
quantized Adam variants. Workers send gradients (codec ``none``); the server averages them,
g = (1/N) sum_i g_i + wd * x, and takes the step of :mod:`qtrain.algorithms.adam_math`,
which equals ``torch.optim.Adam(lr, betas, eps, weight_decay, amsgrad)`` applied to g.
"""

from __future__ import annotations

from qtrain.algorithms.adam_math import adam_direction, init_moments, with_weight_decay
from qtrain.algorithms.base import Algorithm, l2_decay


class Adam(Algorithm):
    name = "adam"

    def init_server_state(self, numel, device):
        return init_moments(numel, device, self.hp.amsgrad)

    def server_update(self, mean, master, state, step):
        g = with_weight_decay(mean, master, l2_decay(self.hp))
        return adam_direction(g, state, step, self.hp)
