"""A worker's half of the step, segment by segment: the algorithm's worker rule, uplink compression
with error feedback, and applying the server's downlink to the local replica.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019; ECQ-SGD's alpha/beta form, Wu et al.
2018), with p the worker rule's output and e the error buffer:

    v = p + alpha * e,    u = Q(v),    e <- beta * e + (p - u)

With alpha = beta = 1 the residual telescopes: sum_t u_t + e_T = sum_t p_t. u comes from the
codec's quantize path together with the message, so the worker never decodes its own message.
The engine takes one path: ``codec_path`` gives it the compiled kernels where they apply and the
torch reference (``kernels/reference_codec.py``, where this rule is written for the reference)
behind the same ``encode_ef``/``decode_combine`` elsewhere.

Every rule the algorithms define is elementwise, so the engine runs it on a segment's slices of the
gradient, the parameters and the rule's state (views, updated in place).
"""

from __future__ import annotations

import math

import torch

from qtrain.algorithms.adam_math import AdamConstants
from qtrain.algorithms.base import Algorithm
from qtrain.algorithms.links import Link
from qtrain.codecs import Codec
from qtrain.codecs.errors import NonFiniteInput
from qtrain.engine.divergence import check_codec_range, check_sum, non_finite_encode
from qtrain.engine.engine_state import EngineState, SegmentStats, segment_state
from qtrain.engine.partition import Partition, Segment
from qtrain.kernels import codec_path
from qtrain.kernels.fusion import AdamFusion
from qtrain.seeding import stream_seed


class WorkerEngine(EngineState):
    def __init__(
        self,
        algorithm: Algorithm,
        uplink: Link,
        downlink_codec: Codec,
        partition: Partition,
        device: torch.device,
        seed: int,
        worker: int,
        kernels: str = "auto",
    ):
        numel = partition.numel
        self.algorithm = algorithm
        self.partition = partition
        self.uplink_codec = uplink.codec
        self.downlink_codec = downlink_codec
        self.mode = algorithm.downlink_mode
        self.alpha, self.beta = algorithm.hp.ef_alpha, algorithm.hp.ef_beta
        self.state = algorithm.init_worker_state(numel, device)
        self.error = torch.zeros(numel, dtype=torch.float32, device=device) if uplink.error_feedback else None
        self.worker = worker
        self.stream_key = stream_seed(seed, "uplink", worker)
        # compiled kernels where they apply, the torch reference behind the same calls elsewhere
        self.up = codec_path(self.uplink_codec, device, kernels)
        self.down = codec_path(self.downlink_codec, device, kernels)
        self._states = [segment_state(self.state, s.slice) for s in partition]
        self.step = 0
        self.stats = SegmentStats()

    def begin_step(self) -> None:
        self.step += 1
        self.stats = SegmentStats()

    def make_uplink(
        self, seg: Segment, grad: torch.Tensor, params: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Worker rule + compression (+ error feedback) of one segment: its packed message,
        written into ``out`` (e.g. the transport's frame) when given. Raises ``Diverged`` when
        the gradient (or what error feedback adds to it) is not finite."""
        what = (
            f"worker {self.worker}'s uplink input (gradient, rule and error feedback) in segment {seg.index}"
        )
        e = self.error[seg.slice] if self.error is not None else None
        try:
            packed = self._make_uplink(seg, grad, params, out)
        except NonFiniteInput as exc:
            raise non_finite_encode(self.step, self.up.codec.name, what, exc, grad[seg.slice], e) from None
        err_sq, ref_sq, _ = self.stats.part(seg)
        check_sum(self.step, ref_sq, what, grad[seg.slice], e)
        if not math.isfinite(err_sq):  # the input was finite: the codec's output overflowed
            check_codec_range(self.step, self.up.codec.name, err_sq, ref_sq, what, grad[seg.slice])
        return packed

    def _make_uplink(self, seg, grad, params, out):
        sl = seg.slice
        e = self.error[sl] if self.error is not None else None
        rule = self.algorithm.fused_worker_rule
        fused_adam = rule == "adam" and self.up.fuses_adam  # the kernel runs the local Adam step
        if rule == "identity" or fused_adam:
            p = grad[sl]
        else:
            p = self.algorithm.worker_update(grad[sl], params[sl], self._states[seg.index], self.step)
        adam = self._adam_fusion(seg, params) if fused_adam else None
        packed, sums = self.up.encode_ef(p, e, self.alpha, self.beta, self.random_stream(seg), out, adam=adam)
        self.stats.add_sums(seg, *sums)
        return packed

    def _adam_fusion(self, seg: Segment, params: torch.Tensor) -> AdamFusion:
        state, hp = self._states[seg.index], self.algorithm.hp
        return AdamFusion(
            state["m"],
            state["v"],
            state.get("vmax"),
            params[seg.slice],
            hp.weight_decay,
            AdamConstants.of(hp, self.step),
        )

    def apply_downlink(self, seg: Segment, packed: torch.Tensor, params: torch.Tensor) -> None:
        """x <- x - d (update mode) or x <- d (weights mode), d the segment's decoded downlink."""
        self.down.decode_combine([packed], params[seg.slice], "subtract" if self.mode == "update" else "set")

    @property
    def last_stats(self) -> dict[str, float]:
        return self.stats.summary("up")
