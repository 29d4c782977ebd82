"""What ranks tell each other between steps, one dataclass per report (DESIGN.md section 9).

The step's uplinks and downlinks are fixed records and packed bytes (``engine/records.py``); what
travels between steps is pickled by the backend (``Backend.gather``/``bcast``) and read by field
name, never by position. Every field is a Python number, string, list, dict or numpy array
(``engine/snapshots.to_numpy`` turns tensors into arrays first): mpi4py's pickle-5 path cannot
carry torch storages, and a report must mean the same on every backend.

From a worker to the lead serving rank, on the control group (``runtime/transport.py``:
``WorkerTransport.report``, ``ServerTransport.reports``):

- :class:`CheckpointReport` at ``session.checkpoint()``: the worker's snapshot and its last
  communication times (they complete the trace rows the lead holds back);
- :class:`BufferReport` at a buffer synchronisation (``runtime/buffer_sync.py``), and back from
  the lead with the combination;
- :class:`FinalReport` at the end of the worker's loop: the last step's times and instants close
  the trace and the timeline.

Each worker report carries the ``session.log`` rows (:data:`Metric`) logged since its last one.

From a serving rank other than the lead, on the servers' group (``runtime/shard_serving.py``):

- :class:`StepPart` after every step: its share of the step's bytes, times and statistics;
- :class:`ShardState` at a checkpoint: its master and replica shards and its engine's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

Metric: TypeAlias = tuple[int, str, float]  # (step, name, value): one ``session.log`` number
# a serving rank's instants of one step (``runtime/timeline.ShardTimeline.take``): its segment
# indices, the step's start (perf_counter), its segments' server marks (seconds since the start),
# its broadcasts' posted and done instants (perf_counter), its segments' record times
ShardTimes: TypeAlias = tuple[list[int], float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class CheckpointReport:
    """A worker's report at a checkpoint (``FLAG_CHECKPOINT``)."""

    snapshot: dict[str, Any]  # engine/snapshots.worker_snapshot, through to_numpy
    comm_s: float  # the last step's communication time: the held trace rows need it
    decode_s: float  # ... and its decode time
    metrics: list[Metric]


@dataclass
class BufferReport:
    """A replica's model buffers (``engine/buffers.buffer_state``, through to_numpy): a worker's
    own, or the combination the lead sends back."""

    buffers: dict[str, Any]


@dataclass
class FinalReport:
    """A worker's report at the end of its loop (``FLAG_END``): its last step's times and instants
    (``WorkerStep``'s), which the next step's records would otherwise have carried."""

    comm_s: float
    decode_s: float
    backward_end: float  # perf_counter instant on the worker's clock
    arrived: np.ndarray  # per segment: when its last downlink arrived (perf_counter)
    applied: np.ndarray  # ... and was applied
    metrics: list[Metric]


@dataclass
class StepPart:
    """One serving rank's part of a step (not the lead's)."""

    up: list[tuple[list[int], int]] = field(default_factory=list)  # (sizes in worker order, numel) a segment
    down: list[tuple[int, int]] = field(default_factory=list)  # (size, numel) per segment
    times: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    # runtime/shard_serving.WORKER_SUMS -> per-worker sums over its segments
    workers: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[int, list[float]] = field(default_factory=dict)  # its engine's SegmentStats.parts
    has_ef: bool = False  # ... and SegmentStats.has_ef
    wire: tuple[int, int] = (0, 0)  # bytes its own link received and sent (QTRAIN_WIRE_DEVICE), or zeros
    timeline: ShardTimes | None = None  # its segments' instants, with a timeline
    stop: str | None = None  # the stop a signal on this serving rank asked for (the lead agrees it)


@dataclass
class ShardState:
    """A serving rank's shard at a checkpoint: what the lead joins into one server's state."""

    master: np.ndarray
    replica: np.ndarray
    state: dict[str, Any]  # its engine's state_dict, through to_numpy


# what travels on the control group between the workers and the lead
ControlReport: TypeAlias = CheckpointReport | BufferReport | FinalReport
