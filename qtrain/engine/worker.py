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
gradient, the parameters and the rule's state (views, updated in place): once per run of one param
group (``engine/param_groups.py``), with that group's values. Decoupled weight decay is applied to
the replica with the downlink (x <- x * (1 - lr * wd) - d), never through the codec.
"""

from __future__ import annotations

import math

import torch

from qtrain.algorithms.adam_math import AdamConstants
from qtrain.algorithms.base import Algorithm, l2_decay
from qtrain.algorithms.links import Link
from qtrain.codecs import Codec
from qtrain.codecs.errors import NonFiniteInput
from qtrain.engine.divergence import check_codec_range, check_sum, non_finite_encode
from qtrain.engine.engine_state import EngineState, SegmentStats, segment_state
from qtrain.engine.link_plan import LinkPlan
from qtrain.engine.param_groups import ParamGroups
from qtrain.engine.partition import Partition, Segment
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
        groups: ParamGroups | None = None,
        uncompressed_steps: int = 0,
    ):
        numel = partition.numel
        self.algorithm = algorithm
        self.groups = groups if groups is not None else ParamGroups.whole(algorithm, partition)
        self.partition = partition
        self.uplink_codec = uplink.codec
        self.downlink_codec = downlink_codec
        self.mode = algorithm.downlink_mode
        self.alpha, self.beta = algorithm.hp.ef_alpha, algorithm.hp.ef_beta
        self.state = self.groups.state_algorithm().init_worker_state(numel, device)
        self.error = torch.zeros(numel, dtype=torch.float32, device=device) if uplink.error_feedback else None
        self.worker = worker
        self.stream_key = stream_seed(seed, "uplink", worker)
        # compiled kernels where they apply, the torch reference behind the same calls elsewhere; the
        # codec ``none`` during an uncompressed warm-up (``engine/link_plan.py``)
        self.links = LinkPlan(self.uplink_codec, downlink_codec, uncompressed_steps, device, kernels)
        self.up, self.down = self.links.paths(0)
        self.feedback = True  # error feedback on this step (off while uncompressed)
        self._states = [segment_state(self.state, s.slice) for s in partition]
        # per segment: (run, the rule's state of the run) for every run of one group
        self._runs = [
            [(r, segment_state(self.state, r.flat)) for r in self.groups.runs(s)] for s in partition
        ]
        self.step = 0
        self.stats = SegmentStats()

    def begin_step(self) -> None:
        self.step += 1
        self.stats = SegmentStats()
        self.use_step(self.step)

    def use_step(self, step: int) -> None:
        """Encode and decode with step ``step``'s codecs. Error feedback is off while uncompressed,
        so the buffers are still zero when the configured codecs take over."""
        self.up, self.down = self.links.paths(step)
        self.feedback = not self.links.uncompressed(step)

    def make_uplink(
        self, seg: Segment, grad: torch.Tensor, params: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Worker rule + compression (+ error feedback) of one segment: its packed message,
        written into ``out`` (e.g. the transport's frame) when given. Raises ``Diverged`` when
        the gradient (or what error feedback adds to it) is not finite."""
        what = (
            f"worker {self.worker}'s uplink input (gradient, rule and error feedback) in segment {seg.index}"
        )
        e = self.error[seg.slice] if self.error is not None and self.feedback else None
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
        e = self.error[sl] if self.error is not None and self.feedback else None
        rule = self.algorithm.fused_worker_rule
        runs = self._runs[seg.index]
        # the kernel runs the local Adam step where one group's values hold for the whole segment
        fused_adam = rule == "adam" and self.up.fuses_adam and len(runs) == 1
        if rule == "identity" or fused_adam:
            p = grad[sl]
        elif len(runs) == 1:
            algo = self.groups.algorithms[runs[0][0].group]
            p = algo.worker_update(grad[sl], params[sl], self._states[seg.index], self.step)
        else:
            p = torch.empty_like(grad[sl])
            for run, state in runs:
                algo = self.groups.algorithms[run.group]
                p[run.local] = algo.worker_update(grad[run.flat], params[run.flat], state, self.step)
        adam = self._adam_fusion(seg, params) if fused_adam else None
        packed, sums = self.up.encode_ef(p, e, self.alpha, self.beta, self.random_stream(seg), out, adam=adam)
        self.stats.add_sums(seg, *sums)
        return packed

    def _adam_fusion(self, seg: Segment, params: torch.Tensor) -> AdamFusion:
        state = self._states[seg.index]
        hp = self.groups.algorithms[self._runs[seg.index][0][0].group].hp
        return AdamFusion(
            state["m"],
            state["v"],
            state.get("vmax"),
            params[seg.slice],
            l2_decay(hp),
            AdamConstants.of(hp, self.step),
        )

    def apply_downlink(self, seg: Segment, packed: torch.Tensor, params: torch.Tensor) -> None:
        """x <- x - d (update mode; x <- x * (1 - lr * wd) - d with decoupled weight decay) or x <- d
        (weights mode: the server decays its master copy), d the segment's decoded downlink."""
        if self.mode == "update":
            self.groups.decay(seg, params)
        self.down.decode_combine([packed], params[seg.slice], "subtract" if self.mode == "update" else "set")

    @property
    def last_stats(self) -> dict[str, float]:
        return self.stats.summary("up")
