"""What the worker and server engines have in common: their checkpointable state, per-segment
views of it, and the compression statistics they report."""

from __future__ import annotations

import math

import torch

from qtrain.codecs import CounterStream


class EngineState:
    """Step counter, the algorithm's state dict and the error-feedback buffer (or None): together,
    everything an engine needs to continue bit-exactly (stochastic rounding is counter-based:
    ``random_stream`` is a function of the key, the step and the segment, and holds no state)."""

    step: int
    state: dict[str, torch.Tensor]
    error: torch.Tensor | None
    stream_key: int

    def random_stream(self, seg) -> CounterStream:
        """The Philox stream of this step's encoding of ``seg`` (counter: step, flat element index)."""
        return CounterStream(self.stream_key, self.step, seg.start)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "algorithm": {k: v.clone() for k, v in self.state.items()},
            "error": None if self.error is None else self.error.clone(),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        for k, v in sd["algorithm"].items():
            self.state[k].copy_(v)
        if self.error is not None:
            self.error.copy_(sd["error"])


def segment_state(state: dict[str, torch.Tensor], where: slice) -> dict[str, torch.Tensor]:
    """Views of an elementwise rule's state for one segment, at ``where`` in the state's vectors
    (updates land in the full buffers)."""
    return {k: v[where] for k, v in state.items()}


class SegmentStats:
    """Compression statistics of one step, kept per segment as sums of squares (||Q(v) - v||^2,
    ||v||^2, ||e||^2), so that combined over segments they equal those of the whole vector."""

    def __init__(self):
        self.parts: dict[int, list[float]] = {}
        self.has_ef = False

    def _part(self, seg) -> list[float]:
        return self.parts.setdefault(seg.index, [0.0, 0.0, 0.0])

    def add_sums(self, seg, err_sq: float, ref_sq: float, ef_sq: float | None) -> None:
        """The statistics of one segment's encoding as the codec path computed them in its pass
        (``ef_sq`` None: no error feedback)."""
        part = self._part(seg)
        part[0] += err_sq
        part[1] += ref_sq
        if ef_sq is not None:
            part[2] += ef_sq
            self.has_ef = True

    def part(self, seg) -> tuple[float, float, float]:
        return tuple(self.parts.get(seg.index, (0.0, 0.0, 0.0)))

    def totals(self) -> tuple[float, float, float]:
        """Sums over segments in index order (the server meets them in arrival order)."""
        parts = [self.parts[k] for k in sorted(self.parts)]
        return tuple(sum(p[i] for p in parts) for i in range(3))

    def summary(self, direction: str) -> dict[str, float]:
        """{"up_rel_error": ||Q(v) - v|| / ||v|| (0 for v = 0), "up_ef_norm": ||e|| (with EF)}."""
        err_sq, ref_sq, ef_sq = self.totals()
        out = {f"{direction}_rel_error": math.sqrt(err_sq / ref_sq) if ref_sq else 0.0}
        if self.has_ef:
            out[f"{direction}_ef_norm"] = math.sqrt(ef_sq)
        return out
