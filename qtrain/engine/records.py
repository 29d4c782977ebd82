"""Fixed-size control records that travel with every message (no extra synchronization).

Uplink record (264 bytes, one per worker per segment per step, sent ahead of the packed message in
the same frame): step, flags (below), message length, segment, the norm to clip the step's mean
gradient to (``max_norm``, float32, 0: no clipping; ``optimizer.clip_grad_norm_``), every param
group's learning rate of the step (``lr``, float64, up to ``MAX_GROUPS``: a library user's
schedule travels this way, see docs/library.md), the
segment's encode seconds and compression sums of squares (||Q(v) - v||^2, ||v||^2, ||e||^2: the
server adds them over segments, so the combined relative error and error norm are those of the
whole vector), and the worker's per-step measurements (batch loss, compute seconds, and the
previous step's communication and downlink-decode seconds: the record leaves before this step's
downlink arrives). The server reads the per-step fields from the last segment's record. Rank 0
learns everything it logs from these, for free. The timeline of the trace (docs/hdf5-schema.md)
comes from the ``t_*`` fields, instants on the worker's ``perf_counter`` clock: the step's start,
when backward completed this segment (its encode began) and when its message was handed to MPI;
and, for this segment in the previous step, when backward ended and when the downlink arrived and
was applied.

Downlink record (24 bytes, broadcast ahead of the server's message of each segment): step, flags
(bit 0: all ranks stop after this step; set on the segment the server completes last, and a worker
stops when any segment of the step carries it), message length, segment, and the norm of the
step's mean gradient before clipping (``grad_norm``, float32, when the step clipped). A
failing server does not report through it: it aborts the job (MPI_Abort).
"""

from __future__ import annotations

import numpy as np

from qtrain.engine.param_groups import MAX_GROUPS

UPLINK_RECORD = np.dtype(
    [
        ("step", "<u4"),
        ("flags", "<u4"),
        ("length", "<u8"),
        ("segment", "<u4"),
        ("max_norm", "<f4"),
        ("loss", "<f8"),
        ("compute_s", "<f8"),
        ("encode_s", "<f8"),
        ("prev_comm_s", "<f8"),
        ("prev_decode_s", "<f8"),
        ("err_sq", "<f8"),
        ("ref_sq", "<f8"),
        ("ef_sq", "<f8"),
        ("t_start", "<f8"),
        ("t_ready", "<f8"),
        ("t_sent", "<f8"),
        ("prev_t_backward", "<f8"),
        ("prev_t_arrived", "<f8"),
        ("prev_t_applied", "<f8"),
        ("lr", "<f8", (MAX_GROUPS,)),
    ]
)
DOWNLINK_RECORD = np.dtype(
    [("step", "<u4"), ("flags", "<u4"), ("length", "<u8"), ("segment", "<u4"), ("grad_norm", "<f4")]
)
assert UPLINK_RECORD.itemsize == 264 and DOWNLINK_RECORD.itemsize == 24

FLAG_STOP = 1  # uplink: this rank asks to stop; downlink: every rank stops after this step
FLAG_CLIP = 2  # downlink: the step clipped its mean gradient; ``grad_norm`` holds its norm before
# Control frames (uplink, length 0, for every segment, in place of the next step's uplinks): a
# worker of the library (``qtrain/library``) tells the server what happens between two steps.
FLAG_CHECKPOINT = 4  # the workers checkpoint after the previous step (gather follows)
FLAG_BUFFERS = 8  # uplink control frame: the workers combine their model buffers now (gather
# follows); downlink: the server evaluates after this step, so every worker combines its buffers
# right after applying the step's downlink
FLAG_END = 16  # the workers' loops ended after the previous step (final report follows)
CONTROL_FLAGS = FLAG_CHECKPOINT | FLAG_BUFFERS | FLAG_END
