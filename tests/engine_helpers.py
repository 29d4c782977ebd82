"""Drive the engine on synthetic gradient streams, without models or data."""

import torch

from qtrain.config import AlgorithmConfig, LinkConfig
from qtrain.engine import ServerEngine, WorkerEngine
from qtrain.engine.setup import resolve_links


class Cfg:
    def __init__(self, algorithm: AlgorithmConfig, uplink: LinkConfig, downlink: LinkConfig):
        self.algorithm, self.uplink, self.downlink = algorithm, uplink, downlink


def build(algorithm: AlgorithmConfig, uplink=None, downlink=None, numel=300, workers=3, seed=0, x0=None):
    algo, up, down = resolve_links(Cfg(algorithm, uplink or LinkConfig(), downlink or LinkConfig()))
    master = (
        x0.clone() if x0 is not None else torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    )
    replica = master.clone()
    server = ServerEngine(algo, up.codec, down, master, seed)
    engines = [
        WorkerEngine(algo, up, down.codec, master.numel(), torch.device("cpu"), seed, w)
        for w in range(workers)
    ]
    return algo, server, engines, replica


def gradient_stream(steps, workers, numel, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(numel, generator=g) * (1 + w) for w in range(workers)] for _ in range(steps)]


def run(server, engines, replica, grads):
    """One step per entry of ``grads`` (a list over workers); returns the uplink/downlink messages."""
    initial = server.initial_message()
    if initial is not None:
        engines[0].apply_downlink(initial, replica)
    ups, downs = [], []
    for step_grads in grads:
        msgs = [e.make_uplink(g, replica) for e, g in zip(engines, step_grads, strict=True)]
        down = server.make_downlink(server.aggregate(msgs))
        engines[0].apply_downlink(down, replica)
        ups.append(msgs)
        downs.append(down)
    return ups, downs
