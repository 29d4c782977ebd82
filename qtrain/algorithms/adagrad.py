"""The diagonal AdaGrad accumulator shared by ``qcmd-adagrad`` and ``qrda-adagrad``.

Duchi, Hazan, Singer (JMLR 2011), diagonal case: G_t = G_{t-1} + g_t^2 (elementwise) and
H_t = delta + sqrt(G_t), with delta = ``algorithm.adagrad_eps``. In the quantized variants of
Xu et al. (2022) g_t is the server's average of the workers' quantized gradients.
"""

from __future__ import annotations

from qtrain.algorithms.base import Algorithm, zeros


class AdaGradServer(Algorithm):
    """Common defaults: threshold-quantized uplink without EF, lossless sparse model downlink."""

    uplink_codec = {"codec": "threshold"}
    uplink_ef = False
    downlink_codec = {"codec": "sparse"}
    downlink_ef = False

    @property
    def downlink_mode(self):
        return "weights"

    def init_server_state(self, numel, device):
        return {"sum_sq": zeros(numel, device)}

    def accumulate(self, g, state):
        """Add g^2 to the accumulator and return H = delta + sqrt(G)."""
        state["sum_sq"].addcmul_(g, g)
        return state["sum_sq"].sqrt().add_(self.hp.adagrad_eps)
