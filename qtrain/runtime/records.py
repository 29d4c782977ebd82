"""Fixed-size control records that travel with every message (no extra synchronization).

Uplink record (72 bytes, one per worker per step, sent ahead of the packed message in the same
frame): step, flags (bit 0: this rank asks to stop), message length, and the worker's per-step
measurements (batch loss, compute/encode seconds, the previous step's communication and
downlink-decode seconds (the record leaves before this step's downlink arrives), relative
compression error, error-buffer norm). Rank 0 learns everything it logs from these, for free.

Downlink record (16 bytes, broadcast ahead of the server's message): step, flags (bit 0: all ranks
stop after this step), message length. A failing server does not report through it: it aborts
the job (MPI_Abort).
"""

from __future__ import annotations

import numpy as np

UPLINK_RECORD = np.dtype(
    [
        ("step", "<u4"),
        ("flags", "<u4"),
        ("length", "<u8"),
        ("loss", "<f8"),
        ("compute_s", "<f8"),
        ("encode_s", "<f8"),
        ("prev_comm_s", "<f8"),
        ("prev_decode_s", "<f8"),
        ("rel_error", "<f8"),
        ("ef_norm", "<f8"),
    ]
)
DOWNLINK_RECORD = np.dtype([("step", "<u4"), ("flags", "<u4"), ("length", "<u8")])
assert UPLINK_RECORD.itemsize == 72 and DOWNLINK_RECORD.itemsize == 16

FLAG_STOP = 1
