"""Drive the engine on synthetic gradient streams, without models or data."""

import torch

from qtrain.algorithms.links import resolve_links
from qtrain.config import AlgorithmConfig, LinkConfig
from qtrain.engine import ServerEngine, WorkerEngine
from qtrain.engine.partition import Partition


class Cfg:
    def __init__(self, algorithm: AlgorithmConfig, uplink: LinkConfig, downlink: LinkConfig):
        self.algorithm, self.uplink, self.downlink = algorithm, uplink, downlink


def build(
    algorithm: AlgorithmConfig, uplink=None, downlink=None, numel=300, workers=3, seed=0, x0=None, segments=1
):
    algo, up, down = resolve_links(Cfg(algorithm, uplink or LinkConfig(), downlink or LinkConfig()))
    master = (
        x0.clone() if x0 is not None else torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    )
    replica = master.clone()
    part = Partition.build(master.numel(), (up.codec.bucket, down.codec.bucket), segments)
    server = ServerEngine(algo, up.codec, down, part, master, seed)
    engines = [WorkerEngine(algo, up, down.codec, part, torch.device("cpu"), seed, w) for w in range(workers)]
    return algo, server, engines, replica


def step(server, engines, replica, grads):
    """One step: every worker's uplink messages and the downlink messages, a list per segment."""
    server.begin_step()
    for e in engines:
        e.begin_step()
    ups = [
        [e.make_uplink(seg, g, replica) for seg in server.partition]
        for e, g in zip(engines, grads, strict=True)
    ]
    downs = []
    for seg in server.partition:
        down = server.make_downlink(seg, server.aggregate(seg, [u[seg.index] for u in ups]))
        engines[0].apply_downlink(seg, down, replica)
        downs.append(down)
    return ups, downs


def run(server, engines, replica, grads):
    """One step per entry of ``grads`` (a list over workers); returns the uplink/downlink messages
    (with one segment: one message per worker and step, one downlink per step)."""
    for seg in server.partition:
        initial = server.initial_message(seg)
        if initial is not None:
            engines[0].apply_downlink(seg, initial, replica)
    ups, downs = [], []
    for step_grads in grads:
        u, d = step(server, engines, replica, step_grads)
        ups.append([m[0] if len(m) == 1 else m for m in u])
        downs.append(d[0] if len(d) == 1 else d)
    return ups, downs


def gradient_stream(steps, workers, numel, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(numel, generator=g) * (1 + w) for w in range(workers)] for _ in range(steps)]
