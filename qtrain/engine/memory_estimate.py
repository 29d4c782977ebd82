"""What a rank's training state takes in memory, from the plan, before any of it is allocated:
printed at start-up ("memory: ...") and checked against the memory each rank has, so a model too
large for its nodes is refused with the numbers instead of failing inside torch.

Counted (float32, n parameters): a worker holds the flat parameters and gradients (8n), its rule
state (4n per state vector: m and v for qadam and efficient-adam), the uplink error buffer (4n
with error feedback), one n-element scratch vector for the decoded downlink, and its two messages.
The serving rank holds the master copy, the sum of the uplinks and a scratch vector (12n), the
server rule state (4n per vector), the downlink error buffer, the replica in weights mode, its
model for evaluation (4n), one uplink message per worker and the downlink. With K serving ranks
(``runtime.servers``) each holds these for its own shard only, the model for evaluation excepted
(the largest shard is counted). Data is not counted:
every loader checks its own reading (``data.bounded``)."""

from __future__ import annotations

import torch

from qtrain.memory import describe, require_fits

FLOAT = 4


def worker_bytes(setup, numel: int, up_wire: int, down_wire: int) -> int:
    vectors = 2 + len(setup.algorithm.init_worker_state(0, torch.device("cpu"))) + 1
    vectors += 1 if setup.uplink.error_feedback else 0
    return FLOAT * numel * vectors + up_wire + down_wire


def server_bytes(setup, numel: int, shard: int, workers: int, up_wire: int, down_wire: int) -> int:
    """A serving rank of a ``shard``-element shard of ``numel`` parameters (wire bytes: its shard's)."""
    vectors = 3 + len(setup.algorithm.init_server_state(0, torch.device("cpu")))
    vectors += 1 if setup.downlink.error_feedback else 0
    vectors += 1 if setup.algorithm.downlink_mode == "weights" else 0
    return FLOAT * (shard * vectors + numel) + workers * up_wire + down_wire


def estimate(setup, partition, workers: int) -> tuple[int, int]:
    """(bytes a worker needs, bytes a serving rank needs: the one of the largest shard)."""
    up_codec, down_codec = setup.uplink.codec, setup.downlink.codec
    up, down = partition.wire_bytes(up_codec), partition.wire_bytes(down_codec)
    n = partition.numel
    owner = max(range(partition.servers), key=lambda k: sum(s.numel for s in partition.owned_by(k)))
    mine = partition.owned_by(owner)
    shard = sum(s.numel for s in mine)
    up_shard = sum(up_codec.wire_bytes(s.numel) for s in mine)
    down_shard = sum(down_codec.wire_bytes(s.numel) for s in mine)
    return worker_bytes(setup, n, up, down), server_bytes(setup, n, shard, workers, up_shard, down_shard)


def describe_estimate(setup, partition, workers: int) -> str:
    w, s = estimate(setup, partition, workers)
    server = "the server" if partition.servers == 1 else f"each of the {partition.servers} servers"
    return (
        f"memory: each worker about {describe(w)}, {server} about {describe(s)} "
        "(parameters, gradients, rule and error-feedback state, messages; data not counted)"
    )


def require_rank_fits(setup, partition, workers: int, serving: bool, rank: int) -> None:
    """MemoryBoundError when this rank's share of its node's memory cannot hold its state."""
    w, s = estimate(setup, partition, workers)
    role = "the serving rank" if serving else "each worker"
    require_fits(
        s if serving else w,
        f"rank {rank} ({role}: {partition.numel} parameters, {setup.algorithm.name})",
    )
