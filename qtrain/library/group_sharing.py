"""The param groups of a library run, from what the user passes to ``session.optimizer`` to what
every rank agrees on (``engine/param_groups.py``).

``session.optimizer`` takes what ``torch.optim`` optimizers take: a model (its trainable
parameters, one group), an iterable of parameters (one group) or a list of param-group dicts
(``params`` and per group ``lr``, ``weight_decay`` and the algorithm's own values: betas and eps
for the Adam-type rules, momentum for the SGD-type ones), plus defaults for every group as
keyword arguments (``lr=``, ``betas=``...), which otherwise come from the ``algorithm`` section.
Every trainable parameter of the model must be in exactly one group, as qtrain trains the whole
flat vector (freeze a parameter with ``requires_grad_(False)`` before ``session.optimizer``);
frozen parameters in a group are skipped, as torch optimizers never update them.

After the model is agreed, the workers compare their groups and the serving ranks receive them:
workers whose groups differ stop the job with one line, as models that differ do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qtrain.engine.param_groups import GroupError, GroupSpec, group_options


def _as_groups(params) -> list[dict]:
    if isinstance(params, torch.nn.Module):
        return [{"params": [p for p in params.parameters() if p.requires_grad]}]
    if isinstance(params, torch.Tensor):
        raise GroupError("params must be an iterable of parameters or of param-group dicts, not one tensor")
    if not isinstance(params, Iterable):
        raise GroupError(
            f"params must be a model, parameters or param-group dicts, not a {type(params).__name__}"
        )
    items = list(params)
    if not items:
        raise GroupError("the optimizer got an empty parameter list")
    if all(isinstance(item, dict) for item in items):
        return items
    if any(isinstance(item, dict) for item in items):
        raise GroupError("params mixes param-group dicts and parameters: pass one kind")
    return [{"params": items}]


def group_specs(algorithm_name: str, params, flat, defaults: dict) -> tuple[list[GroupSpec], list[dict]]:
    """The groups as the ranks agree on them (indices into ``flat.layout``) and as the optimizer
    shows them (``param_groups``: each with its parameters and values). Raises GroupError."""
    groups = _as_groups(params)
    index_of = {}
    for i, (name, _, _) in enumerate(flat.layout):
        index_of[id(flat.module.get_parameter(name))] = i
    seen: dict[int, int] = {}
    specs, shown = [], []
    base = (
        group_options(algorithm_name, "session.optimizer()'s keyword arguments", defaults) if defaults else {}
    )
    for g, group in enumerate(groups):
        if "params" not in group:
            raise GroupError(f"param group {g} has no 'params'")
        members = group["params"]
        members = [members] if isinstance(members, torch.Tensor) else list(members)
        indices = []
        for p in members:
            if not isinstance(p, torch.Tensor):
                raise GroupError(f"param group {g}: {type(p).__name__} is not a parameter")
            i = index_of.get(id(p))
            if i is None and not p.requires_grad:
                continue  # frozen: torch optimizers skip it too (qtrain never trains it)
            if i is None:
                raise GroupError(
                    f"param group {g}: a parameter of shape {list(p.shape)} is not a parameter of the model"
                )
            if i in seen:
                raise GroupError(
                    f"param group {g}: parameter {flat.layout[i][0]} is in group {seen[i]} already "
                    "(a parameter may be in one group only)"
                )
            seen[i] = g
            indices.append(i)
        options = {**base, **group_options(algorithm_name, g, group)}
        specs.append(GroupSpec(tuple(indices), tuple(sorted(options.items()))))
        shown.append((members, options))
    missing = [flat.layout[i][0] for i in range(len(flat.layout)) if i not in seen]
    if missing:
        raise GroupError(
            f"parameter {missing[0]} of the model is in no param group ({len(missing)} are not): qtrain "
            "trains every trainable parameter, so add it to a group or freeze it (requires_grad_(False)) "
            "before session.optimizer()"
        )
    return specs, shown


def share_groups(topology, specs: list[GroupSpec] | None) -> list[GroupSpec]:
    """Collective over every rank, after the model is agreed: the workers' groups (the serving
    ranks pass None), compared; every rank returns worker 0's. Raises GroupError on every rank
    when two workers' groups differ."""
    parts = topology.backend.allgather(None if not topology.is_worker else list(specs or ()))
    workers = [(r, parts[r]) for r in topology.workers]
    first_rank, first = workers[0]
    for rank, theirs in workers[1:]:
        if theirs != first:
            raise GroupError(
                f"the workers' param groups differ: rank {rank}'s are not rank {first_rank}'s "
                f"({_describe(theirs)} against {_describe(first)})"
            )
    return first


def _describe(specs: list[GroupSpec]) -> str:
    if not specs:
        return "one group of every parameter"
    return "; ".join(f"{len(s.params)} parameters with {dict(s.options)}" for s in specs)
