"""``efficient-adam``: Efficient-Adam, two-way quantization with two-way error feedback
(Chen, Shen, Liu, Luo; 2022).

Workers are those of ``qadam`` (local Adam moments, error-compensated uplink u_i = Q(p_i + e_i),
e_i <- e_i + p_i - u_i). The server averages u = (1/N) sum_i u_i, adds its own residual E,
quantizes, keeps the new residual and broadcasts the quantized update, which every replica
(server included) applies:

    d = Q_s(u + E),   E <- u + E - d,   x <- x - d

Default codecs: ``sign`` (1 bit + one fp32 scale per bucket) on both links, EF on both sides.
The server rule itself is the identity; the engine does the downlink compression and residual.
"""

from __future__ import annotations

from qtrain.algorithms.local_adam import LocalAdamWorker


class EfficientAdam(LocalAdamWorker):
    name = "efficient-adam"
    uplink_codec = {"codec": "sign"}
    uplink_ef = True
    downlink_codec = {"codec": "sign"}
    downlink_ef = True
