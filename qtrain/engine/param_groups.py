"""Param groups: per-group hyper-parameters over ranges of the flat vector (DESIGN.md section 9).

A library user passes ``torch.optim``'s param groups to ``session.optimizer``; the workers agree
on them and hand them to the serving ranks with the model (``library/group_sharing.py``). Each
group is a set of parameters (so a set of ranges of the flat vector, in the layout's order) and
its own copy of the ``algorithm`` section with the group's ``lr``, ``weight_decay``, betas, eps
or momentum. Every rule is elementwise, so the engines run a segment's rule once per run of
consecutive elements of one group (:meth:`ParamGroups.runs`), each with its group's algorithm:
the result on each element is what one optimizer with that group's values would compute. Without
groups there is one group, the whole vector, with the config's values: nothing changes.

The learning rate of each group may change every step (a schedule in the user's loop): the
workers send every group's rate with each step's records, and both sides set it with
:meth:`ParamGroups.set_lrs` before the step's rules run.

Decoupled weight decay (``algorithm.decoupled_weight_decay``, Loshchilov & Hutter, ICLR 2019,
Algorithm 2 line 12: x <- x - lr * wd * x beside the step; ``torch.optim.AdamW``) is applied where
the weights live, on every replica and on the serving ranks' master copy, before the step is
subtracted: x <- x * (1 - lr_g * wd_g) - d, as AdamW multiplies the parameter by
(1 - lr * weight_decay) before its update. It never goes through a codec.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from qtrain.algorithms.base import l2_decay

#: the most param groups a run carries (each step's records hold every group's learning rate)
MAX_GROUPS = 16

#: what a group may set, per algorithm family, and the AlgorithmConfig fields it sets
ADAM_KEYS = ("lr", "weight_decay", "betas", "eps")
SGD_KEYS = ("lr", "weight_decay", "momentum")
ADAGRAD_KEYS = ("lr",)
GROUP_KEYS = {
    "adam": ADAM_KEYS,
    "qadam": ADAM_KEYS,
    "efficient-adam": ADAM_KEYS,
    "sgd": SGD_KEYS,
    "ecq-sgd": SGD_KEYS,
    "qcmd-adagrad": ADAGRAD_KEYS,
    "qrda-adagrad": ADAGRAD_KEYS,
}
#: keys torch adds to a group, or that a torch optimizer's own groups carry, that change nothing here
IGNORED_KEYS = ("initial_lr", "name")


class GroupError(ValueError):
    """A param group qtrain cannot honour (the message names the group)."""


def group_options(algorithm_name: str, index: int | str, group: dict) -> dict:
    """The ``AlgorithmConfig`` fields a user's group dict sets (``betas`` becomes beta1, beta2).
    Raises GroupError for a key the algorithm has no use for, or a bad value. ``index``: the
    group's number, or words naming where the values come from."""
    allowed = GROUP_KEYS[algorithm_name]
    where = f"param group {index}" if isinstance(index, int) else index
    out: dict = {}
    for key, value in group.items():
        if key == "params" or key in IGNORED_KEYS:
            continue
        if key not in allowed:
            raise GroupError(
                f"{where}: {algorithm_name} has no use for {key!r} (a group may set {', '.join(allowed)})"
            )
        if key == "betas":
            try:
                b1, b2 = (float(b) for b in value)
            except (TypeError, ValueError):
                raise GroupError(f"{where}: betas must be two numbers, got {value!r}") from None
            for name, b in (("beta1", b1), ("beta2", b2)):
                if not 0 <= b < 1:
                    raise GroupError(f"{where}: betas {value!r}: {name} must be in [0, 1)")
            out["beta1"], out["beta2"] = b1, b2
            continue
        try:
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            raise GroupError(f"{where}: {key} must be a number, got {value!r}") from None
        if not number >= 0 or number == float("inf") or (key == "eps" and number == 0):
            low = "> 0" if key == "eps" else ">= 0"
            raise GroupError(f"{where}: {key} must be a finite number {low}, got {value!r}")
        out[key] = number
    return out


@dataclass(frozen=True)
class GroupSpec:
    """One group as the ranks agree on it: its parameters (indices into the model's layout) and
    the fields of the ``algorithm`` section it sets."""

    params: tuple[int, ...]
    options: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Run:
    """Consecutive elements of one group inside a segment: ``flat`` in the flat vector, ``local``
    in the segment."""

    flat: slice
    local: slice
    group: int


class ParamGroups:
    """The groups of a run: their algorithms (copies of the configured one with the group's
    values) and, per segment, its runs of consecutive elements of one group."""

    def __init__(self, algorithm, specs: list[GroupSpec] | None, layout: list, partition):
        numel = partition.numel
        if not specs:
            specs = [GroupSpec(tuple(range(len(layout))), ())]
        if len(specs) > MAX_GROUPS:
            raise GroupError(f"{len(specs)} param groups: qtrain carries at most {MAX_GROUPS}")
        self._configured = algorithm
        self.algorithms = []
        for spec in specs:
            algo = copy.copy(algorithm)
            algo.hp = dataclasses.replace(algorithm.hp, **dict(spec.options))
            self.algorithms.append(algo)
        self.base_lrs = [float(a.hp.lr) for a in self.algorithms]
        owner = [-1] * len(layout)
        for g, spec in enumerate(specs):
            for i in spec.params:
                owner[i] = g
        if -1 in owner:
            raise GroupError(f"parameter {layout[owner.index(-1)][0]} is in no param group")
        ranges = []  # (start, stop, group) in flat order
        for (_name, offset, shape), g in zip(layout, owner, strict=True):
            n = 1
            for d in shape:
                n *= d
            if ranges and ranges[-1][2] == g and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + n, g)
            elif n:
                ranges.append((offset, offset + n, g))
        if sum(b - a for a, b, _ in ranges) != numel:
            raise GroupError("the param groups do not cover the flat vector")
        self._runs = {}
        for seg in partition:
            runs = []
            for a, b, g in ranges:
                lo, hi = max(a, seg.start), min(b, seg.stop)
                if lo < hi:
                    runs.append(Run(slice(lo, hi), slice(lo - seg.start, hi - seg.start), g))
            self._runs[seg.index] = tuple(runs)
        self.decoupled = any(a.hp.weight_decay and l2_decay(a.hp) == 0.0 for a in self.algorithms)

    @classmethod
    def whole(cls, algorithm, partition) -> ParamGroups:
        """One group of the whole flat vector with the configured values (engines built without
        a plan's groups: tests, tools)."""
        return cls(algorithm, None, [("all", 0, (partition.numel,))], partition)

    def __len__(self) -> int:
        return len(self.algorithms)

    def runs(self, seg) -> tuple[Run, ...]:
        return self._runs[seg.index]

    def set_lrs(self, lrs) -> None:
        for algo, lr in zip(self.algorithms, lrs, strict=True):
            algo.hp.lr = float(lr)

    def state_algorithm(self):
        """The algorithm whose ``init_*_state`` makes state for every group: the configured one,
        with a momentum buffer also when only some group has momentum (a config with momentum keeps
        its buffer whatever the groups say, so its checkpoints hold what the config implies)."""
        momentum = max(getattr(a.hp, "momentum", 0.0) for a in (self._configured, *self.algorithms))
        if momentum == getattr(self._configured.hp, "momentum", 0.0):
            return self._configured
        return with_momentum(self._configured, momentum)

    def decay(self, seg, x: torch.Tensor, flat_offset: int = 0) -> None:
        """Decoupled weight decay of segment ``seg`` on ``x`` (the flat vector, or a shard of it
        starting at ``flat_offset``): x <- x * (1 - lr_g * wd_g) for every run of a decaying group."""
        if not self.decoupled:
            return
        for run in self._runs[seg.index]:
            hp = self.algorithms[run.group].hp
            if hp.weight_decay and not l2_decay(hp):
                x[run.flat.start - flat_offset : run.flat.stop - flat_offset].mul_(
                    1 - hp.lr * hp.weight_decay
                )

    def describe(self) -> str:
        """For the plan line: the groups' sizes and what each sets."""
        if len(self.algorithms) == 1:
            return ""
        parts = []
        for g, algo in enumerate(self.algorithms):
            n = sum(r.flat.stop - r.flat.start for runs in self._runs.values() for r in runs if r.group == g)
            parts.append(f"{g}: {n} params, lr {algo.hp.lr:g}, weight_decay {algo.hp.weight_decay:g}")
        return f"{len(parts)} param groups ({'; '.join(parts)})"


def with_momentum(algorithm, momentum: float):
    """A copy of ``algorithm`` whose hyper-parameters have this ``momentum`` (the state an SGD-type
    rule keeps depends on it)."""
    algo = copy.copy(algorithm)
    algo.hp = dataclasses.replace(algorithm.hp, momentum=momentum)
    return algo
