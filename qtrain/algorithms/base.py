"""The algorithm interface: the two rule slots of the engine (see ``../shared/DESIGN.md``).

    worker:  p = worker_update(g)                 identity | local Adam step
             u = Q_up(p + alpha*e); e = beta*e + (p - u)        (engine, when EF is on)
    server:  s = server_update(mean(u))           identity | SGD | Adam | AdaGrad-CMD | AdaGrad-RDA
             update mode:  d = Q_down(s + E); E = s + E - d; every replica does x <- x - d
             weights mode: s is the new master weights; the downlink carries Q_down(s)

State lives in plain dicts of tensors that the caller owns and checkpoints; rules never keep hidden
state on ``self``. ``step`` counts from 1.
"""

from __future__ import annotations

from typing import Any

import torch

State = dict[str, torch.Tensor]


class Algorithm:
    name: str = ""
    #: uplink/downlink defaults: codec name and parameters, and whether error feedback is on
    uplink_codec: dict[str, Any] = {"codec": "none"}
    uplink_ef: bool = False
    downlink_codec: dict[str, Any] = {"codec": "none"}
    downlink_ef: bool = False
    #: the worker rule in a form the fused kernels know: "identity" (p = g) or "adam" (the local
    #: Adam step of adam_math); None: only ``worker_update`` knows it (the engine calls it)
    fused_worker_rule: str | None = "identity"

    def __init_subclass__(cls, **kwargs):
        """The engine skips ``worker_update`` when ``fused_worker_rule`` is "identity" (the kernels
        and the reference alike): a rule of its own must say so, or it would never run."""
        super().__init_subclass__(**kwargs)
        if "worker_update" in cls.__dict__ and cls.fused_worker_rule == "identity":
            raise TypeError(
                f"{cls.__name__} overrides worker_update but keeps fused_worker_rule = 'identity': "
                "set it to None (or to the fused rule it implements)"
            )

    def __init__(self, hp):
        """``hp`` is the ``algorithm`` section of the config (an AlgorithmConfig)."""
        self.hp = hp

    @property
    def downlink_mode(self) -> str:
        """``update``: the downlink carries a step every replica subtracts; ``weights``: the model."""
        return "update"

    def init_worker_state(self, numel: int, device: torch.device) -> State:
        return {}

    def worker_update(
        self, grad: torch.Tensor, params: torch.Tensor, state: State, step: int
    ) -> torch.Tensor:
        """The vector this worker wants to send (before compression and error feedback)."""
        return grad

    def init_server_state(self, numel: int, device: torch.device) -> State:
        return {}

    def server_update(
        self, mean: torch.Tensor, master: torch.Tensor, state: State, step: int
    ) -> torch.Tensor:
        """From the average of the decoded uplinks: the step to subtract, or the new weights."""
        return mean


def zeros(numel: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(numel, dtype=torch.float32, device=device)


def l2_decay(hp) -> float:
    """The L2 factor a rule adds to its gradient (g + wd * x): ``weight_decay``, unless the decay is
    decoupled (``algorithm.decoupled_weight_decay``: the engines apply it to the weights instead)."""
    return 0.0 if getattr(hp, "decoupled_weight_decay", False) else hp.weight_decay
