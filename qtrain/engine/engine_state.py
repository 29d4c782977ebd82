"""What the worker and server engines have in common: their checkpointable state, and the
relative compression error they report."""

from __future__ import annotations

import torch


class EngineState:
    """Step counter, the algorithm's state dict, the error-feedback buffer (or None) and the
    codec generator: together, everything an engine needs to continue bit-exactly."""

    step: int
    state: dict[str, torch.Tensor]
    error: torch.Tensor | None
    generator: torch.Generator

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "algorithm": {k: v.clone() for k, v in self.state.items()},
            "error": None if self.error is None else self.error.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        for k, v in sd["algorithm"].items():
            self.state[k].copy_(v)
        if self.error is not None:
            self.error.copy_(sd["error"])
        self.generator.set_state(sd["generator"])


def relative_error(v: torch.Tensor, q: torch.Tensor) -> float:
    """||q - v|| / ||v|| (0 for v = 0)."""
    norm = float(v.norm())
    return float((q - v).norm()) / norm if norm else 0.0
