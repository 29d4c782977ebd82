"""The serving rank's stand-in for the workers' model in a library run: a module with the same
parameter names and shapes (and the same persistent buffers), and no forward. The server never
sees the user's class; it keeps the master copy of the flat parameters, combines the buffers and
writes both into checkpoints under the names the user's ``state_dict`` has."""

from __future__ import annotations

import torch
from torch import nn


class LayoutModule(nn.Module):
    def __init__(
        self, params: list[tuple[str, tuple[int, ...]]], buffers: dict[str, torch.Tensor], kind: str = "?"
    ):
        """``kind``: the class name of the workers' model (for the summary)."""
        super().__init__()
        self.kind = kind
        for name, shape in params:
            owner, leaf = self._owner(name)
            owner.register_parameter(leaf, nn.Parameter(torch.zeros(shape, dtype=torch.float32)))
        for name, value in buffers.items():
            owner, leaf = self._owner(name)
            owner.register_buffer(leaf, value.clone())

    def _owner(self, dotted: str) -> tuple[nn.Module, str]:
        """The submodule that holds ``dotted`` (created on the way) and the leaf name."""
        *path, leaf = dotted.split(".")
        module: nn.Module = self
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        return module, leaf

    def forward(self, *args, **kwargs):
        raise RuntimeError("the serving rank holds the model's parameters, not its forward")
