"""The user's own state in a checkpoint (``session.checkpoint(extra=...)``): nested dicts (keys
strings or ints), lists, numbers, strings, booleans, None, tensors and numpy arrays, stored without
pickle (a checkpoint is data, never code: docs/reliability.md). The structure travels as JSON
with each tensor replaced by a reference; the tensors are datasets beside it. Tuples come back as
lists."""

from __future__ import annotations

import json

import numpy as np
import torch

from qtrain.library.errors import UsageError

_REF = "__qtrain_tensor__"
_INT_KEYS = "__qtrain_items__"  # a dict with int keys (an optimizer's ``state``), as [key, value] pairs


def pack(extra) -> dict:
    """``extra`` as a checkpoint subtree: {"json": text, "tensors": {"0": tensor, ...}}."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value, where: str):
        if isinstance(value, torch.Tensor):
            tensors[str(len(tensors))] = value.detach().cpu().clone()
            return {_REF: len(tensors) - 1}
        if isinstance(value, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(value)), where)
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise UsageError(f"session.checkpoint(): key {k!r} in {where} is not a string or int")
            if all(isinstance(k, str) for k in value):
                return {k: walk(v, f"{where}.{k}") for k, v in value.items()}
            return {_INT_KEYS: [[k, walk(v, f"{where}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        raise UsageError(
            f"session.checkpoint(): {where} is a {type(value).__name__}; "
            "extra state holds dicts, lists, numbers, strings, None, tensors and arrays (use .state_dict())"
        )

    tree = {"json": json.dumps(walk(extra, "extra"))}
    if tensors:
        tree["tensors"] = tensors
    return tree


def unpack(tree: dict):
    """What :func:`pack` stored."""
    tensors = tree.get("tensors", {})

    def walk(value):
        if isinstance(value, dict):
            if set(value) == {_REF}:
                return tensors[str(value[_REF])]
            if set(value) == {_INT_KEYS}:
                return {k: walk(v) for k, v in value[_INT_KEYS]}
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(json.loads(tree["json"]))
