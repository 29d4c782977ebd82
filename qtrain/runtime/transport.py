"""Packed uint8 messages between workers and the server, over mpi4py's buffer API (no pickles).

Uplink (worker -> rank 0), per step:
  fixed-size codecs:    one frame = 72-byte uplink record + the message (size known from the
                        config), ``Isend`` by each worker into rank 0's preallocated per-worker
                        ``Irecv`` rows.
  variable-size codecs: the record first (it carries the message length), then the message with
                        a second tag; rank 0 posts the second receive once it knows the length.
Downlink (rank 0 -> all), per step: the 16-byte downlink record + message in one ``Ibcast``
(fixed size), or record then message in two (variable size).

Point-to-point receives on the server (not ``Gather``) let the deadline name exactly which worker
is silent; ``Ibcast`` lets workers wait with a deadline too. See docs/architecture.md.

CUDA-aware MPI: device tensors go to MPI directly after the producing stream is synchronized;
otherwise frames are staged through preallocated host buffers (pinned when CUDA is present).
Everything above this module sees the same calls either way.
"""

from __future__ import annotations

import numpy as np
import torch

from qtrain.runtime.records import DOWNLINK_RECORD, UPLINK_RECORD
from qtrain.runtime.waiting import wait_all

TAG_FRAME = 11
TAG_MESSAGE = 12
SERVER = 0


def _host_buffer(nbytes: int, device: torch.device) -> torch.Tensor:
    buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf.pin_memory() if device.type == "cuda" else buf


def _mpi_buffer(t: torch.Tensor):
    """What mpi4py accepts for a contiguous uint8 tensor: a numpy view on CPU, the tensor itself
    (``__cuda_array_interface__``) on a CUDA device."""
    return t.numpy() if t.device.type == "cpu" else t


class Transport:
    def __init__(
        self,
        comm,
        uplink_codec,
        downlink_codec,
        numel: int,
        device: torch.device,
        cuda_aware: bool,
        timeout_s: float,
    ):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.workers = self.size - 1
        self.device = device
        self.cuda_aware = cuda_aware and device.type == "cuda"
        self.timeout_s = timeout_s
        self.up_fixed = uplink_codec.fixed_size
        self.down_fixed = downlink_codec.fixed_size
        self.up_max = uplink_codec.wire_bytes(numel)
        self.down_max = downlink_codec.wire_bytes(numel)
        self.up_frame = UPLINK_RECORD.itemsize + (self.up_max if self.up_fixed else 0)
        self.down_frame = DOWNLINK_RECORD.itemsize + (self.down_max if self.down_fixed else 0)
        if self.rank == SERVER:
            self._recv = np.empty((self.workers, self.up_frame), dtype=np.uint8)
            self._recv_msgs = [np.empty(self.up_max, dtype=np.uint8) for _ in range(self.workers)]
            self._down = np.empty(self.down_frame, dtype=np.uint8)
        else:
            staging_device = device if self.cuda_aware else torch.device("cpu")
            if self.cuda_aware:
                self._send = torch.empty(self.up_frame, dtype=torch.uint8, device=device)
                self._down_t = torch.empty(self.down_frame, dtype=torch.uint8, device=device)
            else:
                self._send = _host_buffer(self.up_frame, device)
                self._down_t = _host_buffer(self.down_frame, device)
            self._msg_t = None if self.down_fixed else _host_buffer(self.down_max, staging_device)
            self._pending_send = []

    # ---------------------------------------------------------------- worker side
    def send_uplink(self, record: np.ndarray, packed: torch.Tensor) -> None:
        """Post this worker's record + message to rank 0 (completion is checked next step)."""
        self._finish_sends()
        n = packed.numel()
        record["length"] = n
        rec_bytes = torch.from_numpy(record.view(np.uint8).copy())
        if self.cuda_aware and packed.device.type == "cuda":
            torch.cuda.current_stream(packed.device).synchronize()
        if self.up_fixed:
            self._send[: UPLINK_RECORD.itemsize].copy_(rec_bytes)
            self._send[UPLINK_RECORD.itemsize : UPLINK_RECORD.itemsize + n].copy_(packed)
            if self.cuda_aware:
                torch.cuda.current_stream(self.device).synchronize()
            self._pending_send = [self.comm.Isend(_mpi_buffer(self._send), dest=SERVER, tag=TAG_FRAME)]
            return
        self._send[: UPLINK_RECORD.itemsize].copy_(rec_bytes)
        msg = packed if (self.cuda_aware or packed.device.type == "cpu") else packed.cpu()
        if self.cuda_aware:
            torch.cuda.current_stream(self.device).synchronize()
        self._keep = msg  # the buffer must live until the send completes
        self._pending_send = [
            self.comm.Isend(_mpi_buffer(self._send[: UPLINK_RECORD.itemsize]), dest=SERVER, tag=TAG_FRAME),
            self.comm.Isend(_mpi_buffer(msg), dest=SERVER, tag=TAG_MESSAGE),
        ]

    def _finish_sends(self) -> None:
        if self._pending_send:
            wait_all(self._pending_send, self.timeout_s, "uplink send", [SERVER] * len(self._pending_send))
            self._pending_send = []

    def recv_downlink(self) -> tuple[np.void, torch.Tensor]:
        """The server's record and message for this step, on this worker's device."""
        frame = self._down_t
        req = self.comm.Ibcast(_mpi_buffer(frame), root=SERVER)
        wait_all([req], self.timeout_s, "downlink broadcast", [SERVER])
        self._finish_sends()
        head = frame[: DOWNLINK_RECORD.itemsize].cpu().numpy().view(DOWNLINK_RECORD)[0].copy()
        n = int(head["length"])
        if self.down_fixed:
            msg = frame[DOWNLINK_RECORD.itemsize : DOWNLINK_RECORD.itemsize + n]
        else:
            msg = self._msg_t[:n]
            req = self.comm.Ibcast(_mpi_buffer(msg), root=SERVER)
            wait_all([req], self.timeout_s, "downlink broadcast (message)", [SERVER])
        if msg.device != self.device:
            msg = msg.to(self.device, non_blocking=True)
        return head, msg

    # ---------------------------------------------------------------- server side
    def gather_uplinks(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Every worker's record and message, in worker order (rank 1, 2, ...)."""
        peers = list(range(1, self.size))
        reqs = [self.comm.Irecv(self._recv[i], source=r, tag=TAG_FRAME) for i, r in enumerate(peers)]
        wait_all(reqs, self.timeout_s, "uplink gather", peers)
        records = self._recv[:, : UPLINK_RECORD.itemsize].copy().view(UPLINK_RECORD).reshape(-1)
        lengths = [int(n) for n in records["length"]]
        for i, n in enumerate(lengths):
            if n > self.up_max:
                raise RuntimeError(
                    f"rank {i + 1} announced a {n}-byte uplink, more than the {self.up_max} possible"
                )
        if self.up_fixed:
            base = UPLINK_RECORD.itemsize
            msgs = [torch.from_numpy(self._recv[i, base : base + n]) for i, n in enumerate(lengths)]
            return records, msgs
        reqs = [
            self.comm.Irecv(self._recv_msgs[i][:n], source=r, tag=TAG_MESSAGE)
            for i, (r, n) in enumerate(zip(peers, lengths, strict=True))
        ]
        wait_all(reqs, self.timeout_s, "uplink gather (messages)", peers)
        return records, [torch.from_numpy(self._recv_msgs[i][:n]) for i, n in enumerate(lengths)]

    def broadcast_downlink(self, step: int, flags: int, packed: torch.Tensor) -> None:
        packed = packed.cpu()
        n = packed.numel()
        head = np.zeros(1, dtype=DOWNLINK_RECORD)
        head["step"], head["flags"], head["length"] = step, flags, n
        self._down[: DOWNLINK_RECORD.itemsize] = head.view(np.uint8)
        if self.down_fixed:
            self._down[DOWNLINK_RECORD.itemsize : DOWNLINK_RECORD.itemsize + n] = packed.numpy()
            req = self.comm.Ibcast(self._down, root=SERVER)
            wait_all([req], self.timeout_s, "downlink broadcast", None)
            return
        req = self.comm.Ibcast(self._down[: DOWNLINK_RECORD.itemsize], root=SERVER)
        wait_all([req], self.timeout_s, "downlink broadcast", None)
        req = self.comm.Ibcast(packed.numpy(), root=SERVER)
        wait_all([req], self.timeout_s, "downlink broadcast (message)", None)
