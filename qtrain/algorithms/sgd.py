"""``sgd``: full-precision parameter-server SGD with optional (Nesterov) momentum; the baseline.

Workers send their gradient g_i (codec ``none``); the server averages g = (1/N) sum_i g_i and,
with weight decay wd, momentum mu (as ``torch.optim.SGD``, dampening 0):

    d = g + wd * x
    b_t = mu * b_{t-1} + d               (b_0 = 0, so b_1 = d)
    s = lr * (d + mu * b_t)  if nesterov else  lr * b_t
    x <- x - s                           (on every replica, via the downlink)
"""

from __future__ import annotations

from qtrain.algorithms.base import Algorithm, l2_decay, zeros


def sgd_step(mean, master, state, hp):
    wd = l2_decay(hp)
    d = mean.add(master, alpha=wd) if wd else mean
    if hp.momentum:
        buf = state["momentum"]
        buf.mul_(hp.momentum).add_(d)
        d = d.add(buf, alpha=hp.momentum) if hp.nesterov else buf
    return d.mul(hp.lr)


class SGD(Algorithm):
    name = "sgd"

    def init_server_state(self, numel, device):
        return {"momentum": zeros(numel, device)} if self.hp.momentum else {}

    def server_update(self, mean, master, state, step):
        return sgd_step(mean, master, state, self.hp)
