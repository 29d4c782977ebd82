"""The server's half of the step, segment by segment: average the uplinks, run the server rule,
compress the downlink (with the server-side error feedback of Efficient-Adam where enabled).

    mean = (1/N) sum_i decode(m_i)        (accumulated in worker order: bit-reproducible)
    s = server_update(mean)
    update mode:   v = s + E,  d = Q(v),  E <- v - d,  x <- x - d,  send d
    weights mode:  x <- s,  send Q(x)     (master weights stay full precision on the server)

The uplinks are accumulated in one ``decode_combine`` of the codec path (the compiled kernel, or
the reference's ``decode_add_`` per message: no decoded copy of any message), and d comes from the
codec's quantize path with the message, so the server never decodes its own downlink.
Every server rule is elementwise, so it runs on the segment's slices of the mean, the master
weights and the rule's state; and so an engine can serve one **shard** (DESIGN.md section 8): with
``runtime.servers`` = K, serving rank k holds the master copy, the rule's state and the error
buffer of only the contiguous run of segments it owns (``Partition.shard(k)``). The stochastic
rounding of a segment draws the Philox counters of its flat elements (``EngineState.random_stream``),
so which rank serves a segment changes no draw, and the K shards compute what one server would.
"""

from __future__ import annotations

import torch

from qtrain.algorithms.base import Algorithm
from qtrain.algorithms.links import Link
from qtrain.codecs import Codec
from qtrain.codecs.errors import NonFiniteInput
from qtrain.engine.divergence import check_sum, non_finite_encode
from qtrain.engine.engine_state import EngineState, SegmentStats, segment_state
from qtrain.engine.link_plan import LinkPlan
from qtrain.engine.param_groups import ParamGroups
from qtrain.engine.partition import Partition, Segment
from qtrain.seeding import stream_seed


class ServerEngine(EngineState):
    def __init__(
        self,
        algorithm: Algorithm,
        uplink_codec: Codec,
        downlink: Link,
        partition: Partition,
        master: torch.Tensor,
        seed: int,
        kernels: str = "auto",
        owner: int = 0,
        groups: ParamGroups | None = None,
        uncompressed_steps: int = 0,
    ):
        """``master``: the shard of the flat vector this engine serves (``partition.shard(owner)``;
        the whole vector with one server)."""
        self.owner, self.shard = owner, partition.shard(owner)
        self.segments = partition.owned_by(owner)
        numel, device = master.numel(), master.device
        if numel != self.shard.stop - self.shard.start:
            raise ValueError(f"serving rank {owner}'s shard {self.shard} does not fit {numel} elements")
        self.algorithm = algorithm
        self.groups = groups if groups is not None else ParamGroups.whole(algorithm, partition)
        self.partition = partition
        self.uplink_codec = uplink_codec
        self.downlink_codec = downlink.codec
        self.mode = algorithm.downlink_mode
        self.master = master
        self.state = self.groups.state_algorithm().init_server_state(numel, device)
        self.error = (
            torch.zeros(numel, dtype=torch.float32, device=device) if downlink.error_feedback else None
        )
        self.stream_key = stream_seed(seed, "downlink", None)
        # compiled kernels where they apply, the torch reference behind the same calls elsewhere; the
        # codec ``none`` during an uncompressed warm-up (``engine/link_plan.py``)
        self.links = LinkPlan(uplink_codec, self.downlink_codec, uncompressed_steps, device, kernels)
        self.up, self.down = self.links.paths(0)
        self.feedback = True
        self._states = {s.index: segment_state(self.state, self._local(s)) for s in self.segments}
        base = self.shard.start  # per segment: (run, its place in the segment's shard, the rule's state)
        self._runs = {
            s.index: [
                (
                    r,
                    slice(r.flat.start - base, r.flat.stop - base),
                    segment_state(self.state, slice(r.flat.start - base, r.flat.stop - base)),
                )
                for r in self.groups.runs(s)
            ]
            for s in self.segments
        }
        self._sum = torch.zeros(numel, dtype=torch.float32, device=device)
        # weights mode: what every worker holds (the dequantized downlink), for checkpoints
        self.replica = master.clone() if self.mode == "weights" else master
        self.step = 0
        self.stats = SegmentStats()

    def _local(self, seg: Segment):
        """The segment's place in this engine's shard (what ``seg.slice`` is in the flat vector)."""
        return slice(seg.start - self.shard.start, seg.stop - self.shard.start)

    def initial_message(self, seg: Segment) -> torch.Tensor | None:
        """Weights mode: the starting weights every worker must adopt before step 1."""
        if self.mode != "weights":
            return None
        return self._send_weights(seg)

    def begin_step(self) -> None:
        self.step += 1
        self.stats = SegmentStats()
        self.use_step(self.step)

    def use_step(self, step: int) -> None:
        """Decode and encode with step ``step``'s codecs. Error feedback is off while uncompressed,
        so the downlink's buffer is still zero when the configured codecs take over."""
        self.up, self.down = self.links.paths(step)
        self.feedback = not self.links.uncompressed(step)

    def aggregate(self, seg: Segment, messages: list[torch.Tensor]) -> torch.Tensor:
        """Mean of one segment's decoded uplinks, summed in the order given (worker 0, 1, ...)."""
        return self.up.decode_combine(messages, self._sum[self._local(seg)], "mean")

    def make_downlink(self, seg: Segment, mean: torch.Tensor) -> torch.Tensor:
        """The server rule on the segment's mean and its downlink message. Raises ``Diverged`` when
        the update (or, in weights mode, the weights) is not finite."""
        what = f"the server's update of segment {seg.index}"
        try:
            packed = self._make_downlink(seg, mean)
        except NonFiniteInput as exc:
            raise non_finite_encode(
                self.step, self.down.codec.name, what, exc, mean, self.master[self._local(seg)]
            ) from None
        check_sum(self.step, self.stats.part(seg)[1], what, mean, self.master[self._local(seg)])
        return packed

    def _make_downlink(self, seg: Segment, mean: torch.Tensor) -> torch.Tensor:
        sl = self._local(seg)
        self.groups.decay(
            seg, self.master, self.shard.start
        )  # decoupled weight decay, where the weights live
        runs = self._runs[seg.index]
        if len(runs) == 1:
            algo = self.groups.algorithms[runs[0][0].group]
            s = algo.server_update(mean, self.master[sl], self._states[seg.index], self.step)
        else:
            s = torch.empty_like(mean)
            for run, where, state in runs:
                algo = self.groups.algorithms[run.group]
                s[run.local] = algo.server_update(mean[run.local], self.master[where], state, self.step)
        if self.mode == "weights":
            self.master[sl].copy_(s)
            return self._send_weights(seg)
        e = self.error[sl] if self.error is not None and self.feedback else None
        # v = s + E, d = Q(v), E = v - d (E <- 1*E + s - d, the same roundings), x -= d
        packed, sums = self.down.encode_ef(s, e, 1.0, 1.0, self.random_stream(seg), target=self.master[sl])
        self.stats.add_sums(seg, *sums)
        return packed

    def _send_weights(self, seg: Segment) -> torch.Tensor:
        sl = self._local(seg)
        packed, sums = self.down.encode_ef(
            self.master[sl], rng=self.random_stream(seg), values=self.replica[sl]
        )
        self.stats.add_sums(seg, *sums)
        return packed

    @property
    def last_stats(self) -> dict[str, float]:
        return self.stats.summary("down")
