"""A worker's half of the step: the algorithm's worker rule, uplink compression with error
feedback, and applying the server's downlink to the local replica.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019; ECQ-SGD's alpha/beta form, Wu et al.
2018), with p the worker rule's output and e the error buffer:

    v = p + alpha * e,    u = Q(v),    e <- beta * e + (p - u)

With alpha = beta = 1 the residual telescopes: sum_t u_t + e_T = sum_t p_t.
"""

from __future__ import annotations

import torch

from qtrain.algorithms.base import Algorithm
from qtrain.codecs import Codec
from qtrain.data.sampler import derive_seed
from qtrain.engine.engine_state import EngineState, relative_error
from qtrain.engine.links import Link


class WorkerEngine(EngineState):
    def __init__(
        self,
        algorithm: Algorithm,
        uplink: Link,
        downlink_codec: Codec,
        numel: int,
        device: torch.device,
        seed: int,
        worker: int,
    ):
        self.algorithm = algorithm
        self.uplink_codec = uplink.codec
        self.downlink_codec = downlink_codec
        self.mode = algorithm.downlink_mode
        self.alpha, self.beta = algorithm.hp.ef_alpha, algorithm.hp.ef_beta
        self.state = algorithm.init_worker_state(numel, device)
        self.error = torch.zeros(numel, dtype=torch.float32, device=device) if uplink.error_feedback else None
        self.generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "uplink", worker))
        self.step = 0
        self.last_stats: dict[str, float] = {}

    def make_uplink(self, grad: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Worker rule + compression (+ error feedback): the packed message for the server."""
        self.step += 1
        p = self.algorithm.worker_update(grad, params, self.state, self.step)
        v = p.add(self.error, alpha=self.alpha) if self.error is not None else p
        packed = self.uplink_codec.encode(v, generator=self.generator)
        u = self.uplink_codec.decode(packed)
        self.last_stats = {"up_rel_error": relative_error(v, u)}
        if self.error is not None:
            self.error.mul_(self.beta).add_(p).sub_(u)
            self.last_stats["up_ef_norm"] = float(self.error.norm())
        return packed

    def apply_downlink(self, packed: torch.Tensor, params: torch.Tensor) -> None:
        """x <- x - d (update mode) or x <- d (weights mode), d the decoded downlink."""
        d = self.downlink_codec.decode(packed)
        if self.mode == "update":
            params.sub_(d)
        else:
            params.copy_(d)
