"""The worker side shared by ``qadam`` and ``efficient-adam``: a local Adam step on each worker.

m_i, v_i <- Adam moments of g_i + wd * x_i        (adam_math; x_i is the worker's replica)
p_i = lr * mhat_i / (sqrt(vhat_i) + eps)          (what the worker compresses and sends)
"""

from __future__ import annotations

from qtrain.algorithms.adam_math import adam_direction, init_moments, with_weight_decay
from qtrain.algorithms.base import Algorithm, l2_decay


class LocalAdamWorker(Algorithm):
    fused_worker_rule = "adam"

    def init_worker_state(self, numel, device):
        return init_moments(numel, device, self.hp.amsgrad)

    def worker_update(self, grad, params, state, step):
        g = with_weight_decay(grad, params, l2_decay(self.hp))
        return adam_direction(g, state, step, self.hp)
