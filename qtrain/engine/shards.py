"""K serving ranks' shards (DESIGN.md section 8) joined into one server's state and cut back.

With ``runtime.servers`` = K each serving rank's :class:`~qtrain.engine.server.ServerEngine` holds
the master copy, the rule's state and the error buffer of its own contiguous shard of the flat
vector (``Partition.shard(k)``). A checkpoint stores what one server would hold (the shards
concatenated, owner 0's first: the head of the flat vector), so the file does not depend on K and
a run resumes with any K: :func:`cut_state` gives each owner its part.

:class:`InProcessShards` is the simulator's K servers in one process behind the one engine's
interface: each segment goes to the engine that owns it; statistics combine as sums of squares.
"""

from __future__ import annotations

import torch

from qtrain.engine.engine_state import SegmentStats


def join_states(states: list[dict]) -> dict:
    """One server's ``state_dict`` from the shards' (in owner order)."""
    steps = {int(s["step"]) for s in states}
    if len(steps) != 1:
        raise ValueError(f"the serving ranks' shards are at different steps: {sorted(steps)}")
    errors = [s["error"] for s in states]
    return {
        "step": steps.pop(),
        "algorithm": {k: torch.cat([s["algorithm"][k] for s in states]) for k in states[0]["algorithm"]},
        "error": None if errors[0] is None else torch.cat(errors),
    }


def cut_state(state: dict, shard: slice) -> dict:
    """The part of one server's ``state_dict`` that the owner of ``shard`` holds."""
    return {
        "step": state["step"],
        "algorithm": {k: v[shard] for k, v in state["algorithm"].items()},
        "error": None if state.get("error") is None else state["error"][shard],  # absent: no EF
    }


def join_stats(parts: list[SegmentStats]) -> SegmentStats:
    """One step's statistics of every shard: the per-segment sums of squares side by side, so the
    totals are summed in segment order as one server's are."""
    out = SegmentStats()
    for p in parts:
        out.parts.update(p.parts)
        out.has_ef |= p.has_ef
    return out


class InProcessShards:
    """The simulator's K serving ranks: one engine per owner, on views of the full ``master``
    (its shards), each segment served by its owner's engine."""

    def __init__(self, engines: list, master: torch.Tensor):
        self.engines, self.master = engines, master
        self.algorithm, self.mode = engines[0].algorithm, engines[0].mode
        self.groups = engines[0].groups  # the plan's, shared by every engine
        self.links = engines[0].links
        self._owner = {s.index: e for e in engines for s in e.segments}

    @property
    def step(self) -> int:
        return self.engines[0].step

    @property
    def replica(self) -> torch.Tensor:
        """What every worker holds (weights mode: the dequantized downlinks; else the master)."""
        if self.mode != "weights":
            return self.master
        return torch.cat([e.replica for e in self.engines])

    def initial_message(self, seg):
        return self._owner[seg.index].initial_message(seg)

    def begin_step(self) -> None:
        for e in self.engines:
            e.begin_step()

    def aggregate(self, seg, messages):
        return self._owner[seg.index].aggregate(seg, messages)

    def make_downlink(self, seg, mean):
        return self._owner[seg.index].make_downlink(seg, mean)

    @property
    def stats(self) -> SegmentStats:
        return join_stats([e.stats for e in self.engines])

    @property
    def last_stats(self) -> dict[str, float]:
        return self.stats.summary("down")

    def state_dict(self) -> dict:
        return join_states([e.state_dict() for e in self.engines])

    def load_state_dict(self, sd: dict) -> None:
        for e in self.engines:
            e.load_state_dict(cut_state(sd, e.shard))
