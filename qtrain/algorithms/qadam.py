"""``qadam``: Quantized Adam with error feedback (Chen, Shen, Huang, Liu; 2020/2021).

Worker i keeps Adam moments (m_i, v_i) of its own gradients and an error buffer e_i:

    p_i = lr * mhat_i / (sqrt(vhat_i) + eps)             (local Adam step, see local_adam)
    u_i = Q(p_i + e_i),   e_i <- e_i + p_i - u_i        (engine-side error feedback, on by default)

The server averages u = (1/N) sum_i u_i and applies x <- x - u (downlink ``none``). Default Q:
``uniform``, 2 bits, linf scale, stochastic rounding.

Weight-quantization mode (``algorithm.weight_quantization: true``): the server keeps
full-precision master weights x <- x - u and sends Q_w(x) with a deterministic grid codec (default
``uniform``, 8 bits, linf, nearest rounding); workers compute gradients at the quantized weights.
"""

from __future__ import annotations

from qtrain.algorithms.local_adam import LocalAdamWorker


class QAdam(LocalAdamWorker):
    name = "qadam"
    uplink_codec = {"codec": "uniform", "bits": 2, "norm": "linf", "rounding": "stochastic"}
    uplink_ef = True

    def __init__(self, hp):
        super().__init__(hp)
        if hp.weight_quantization:
            self.downlink_codec = {"codec": "uniform", "bits": 8, "norm": "linf", "rounding": "nearest"}

    @property
    def downlink_mode(self):
        return "weights" if self.hp.weight_quantization else "update"

    def server_update(self, mean, master, state, step):
        return master - mean if self.hp.weight_quantization else mean
