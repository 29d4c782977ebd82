"""``ecq-sgd``: error-compensated quantized SGD (Wu, Huang, Huang, Zhang; ICML 2018).

Worker i keeps an error buffer h_i (engine-side error feedback, on by default) and sends

    q_i = Q(g_i + alpha * h_i),    h_i <- beta * h_i + (g_i - q_i)        (Wu et al., Alg. 1)

with alpha = ``algorithm.ef_alpha``, beta = ``algorithm.ef_beta`` (defaults 1, 1: plain error
feedback). Q defaults to the ``uniform`` codec, 2 bits (s = 1), linf bucket scale, stochastic
rounding. The server averages q = (1/N) sum_i q_i and takes the SGD step of :mod:`sgd` (momentum
and weight decay optional); the downlink carries that full-precision step (codec ``none``).
"""

from __future__ import annotations

from qtrain.algorithms.sgd import SGD


class ECQSGD(SGD):
    name = "ecq-sgd"
    uplink_codec = {"codec": "uniform", "bits": 2, "norm": "linf", "rounding": "stochastic"}
    uplink_ef = True
