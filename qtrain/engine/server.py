"""The server's half of the step: average the decoded uplinks, run the server rule, compress the
downlink (with the server-side error feedback of Efficient-Adam where enabled).

    mean = (1/N) sum_i decode(m_i)        (summed in worker order: bit-reproducible)
    s = server_update(mean)
    update mode:   v = s + E,  d = Q(v),  E <- v - d,  x <- x - d,  send d
    weights mode:  x <- s,  send Q(x)     (master weights stay full precision on the server)
"""

from __future__ import annotations

import torch

from qtrain.algorithms.base import Algorithm
from qtrain.codecs import Codec
from qtrain.data.sampler import derive_seed
from qtrain.engine.engine_state import EngineState, relative_error
from qtrain.engine.links import Link


class ServerEngine(EngineState):
    def __init__(
        self,
        algorithm: Algorithm,
        uplink_codec: Codec,
        downlink: Link,
        master: torch.Tensor,
        seed: int,
    ):
        numel, device = master.numel(), master.device
        self.algorithm = algorithm
        self.uplink_codec = uplink_codec
        self.downlink_codec = downlink.codec
        self.mode = algorithm.downlink_mode
        self.master = master
        self.state = algorithm.init_server_state(numel, device)
        self.error = (
            torch.zeros(numel, dtype=torch.float32, device=device) if downlink.error_feedback else None
        )
        self.generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "downlink"))
        self.step = 0
        self._sum = torch.zeros(numel, dtype=torch.float32, device=device)
        self._decoded = torch.zeros(numel, dtype=torch.float32, device=device)
        self.last_stats: dict[str, float] = {}

    def initial_message(self) -> torch.Tensor | None:
        """Weights mode: the starting weights every worker must adopt before step 1."""
        if self.mode != "weights":
            return None
        return self.downlink_codec.encode(self.master, generator=self.generator)

    def aggregate(self, messages: list[torch.Tensor]) -> torch.Tensor:
        """Mean of the decoded uplinks, summed in the order given (worker 1, 2, ...)."""
        self._sum.zero_()
        for m in messages:
            self._sum.add_(self.uplink_codec.decode(m, out=self._decoded))
        return self._sum.div_(len(messages))

    def make_downlink(self, mean: torch.Tensor) -> torch.Tensor:
        self.step += 1
        s = self.algorithm.server_update(mean, self.master, self.state, self.step)
        if self.mode == "weights":
            self.master.copy_(s)
            packed = self.downlink_codec.encode(self.master, generator=self.generator)
            self.last_stats = {
                "down_rel_error": relative_error(self.master, self.downlink_codec.decode(packed))
            }
            return packed
        v = s.add(self.error) if self.error is not None else s
        packed = self.downlink_codec.encode(v, generator=self.generator)
        d = self.downlink_codec.decode(packed)
        self.last_stats = {"down_rel_error": relative_error(v, d)}
        if self.error is not None:
            torch.sub(v, d, out=self.error)
            self.last_stats["down_ef_norm"] = float(self.error.norm())
        self.master.sub_(d)
        return packed
