"""Packed uint8 messages between workers and the server, segment by segment, over mpi4py's buffer
API (no pickles). Which rank serves a segment, and which ranks work, comes from the Topology; the
segments and their MPI tags from the Partition.

Uplink (worker -> the segment's server), per step and segment:
  fixed-size codecs:    one frame = uplink record + the message (size known from the config), sent
                        with ``Isend`` into the server's preallocated per-(segment, worker) rows;
                        the worker encodes straight into its frame when frame and data share a device.
  variable-size codecs: the record first (it carries the message length), then the message with
                        the segment's second tag; the server posts that receive once it knows the length.
Downlink (server -> all), per step and segment: the downlink record + message in one ``Ibcast``
(fixed size), or record then message in two (variable size).

The server posts every receive of a step at once (``post_uplinks``) and completes them segment by
segment. Point-to-point receives (not ``Gather``) let the deadline name exactly which worker is
silent; ``Ibcast`` lets workers wait with a deadline too. See docs/architecture.md.

CUDA-aware MPI: device tensors go to MPI directly after the producing stream is synchronized;
otherwise frames are staged through preallocated host buffers (pinned when CUDA is present).
"""

from __future__ import annotations

import numpy as np
import torch

from qtrain.runtime.records import DOWNLINK_RECORD, UPLINK_RECORD
from qtrain.runtime.waiting import wait_all

UP = UPLINK_RECORD.itemsize
DOWN = DOWNLINK_RECORD.itemsize


def _host_buffer(nbytes: int, device: torch.device) -> torch.Tensor:
    buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf.pin_memory() if device.type == "cuda" else buf


def _mpi_buffer(t: torch.Tensor):
    """What mpi4py accepts for a contiguous uint8 tensor: a numpy view on CPU, the tensor itself
    (``__cuda_array_interface__``) on a CUDA device."""
    return t.numpy() if t.device.type == "cpu" else t


class Transport:
    def __init__(
        self, topology, partition, uplink_codec, downlink_codec, device, cuda_aware: bool, timeout_s: float
    ):
        self.topology, self.partition = topology, partition
        self.comm = topology.comm
        self.device = device
        self.cuda_aware = cuda_aware and device.type == "cuda"
        self.timeout_s = timeout_s
        self.up_fixed, self.down_fixed = uplink_codec.fixed_size, downlink_codec.fixed_size
        self.up_max = [uplink_codec.wire_bytes(s.numel) for s in partition]
        self.down_max = [downlink_codec.wire_bytes(s.numel) for s in partition]
        up_frame = [UP + (m if self.up_fixed else 0) for m in self.up_max]
        down_frame = [DOWN + (m if self.down_fixed else 0) for m in self.down_max]
        workers = topology.num_workers
        if topology.is_server:
            self._recv = [np.empty((workers, n), dtype=np.uint8) for n in up_frame]
            if not self.up_fixed:  # fixed-size messages arrive inside their frames
                self._recv_msgs = [[np.empty(m, dtype=np.uint8) for _ in range(workers)] for m in self.up_max]
            self._down = [np.empty(n, dtype=np.uint8) for n in down_frame]
            self._posted: list = [None] * len(partition)
            return
        frames_on = device if self.cuda_aware else torch.device("cpu")

        def buffer(n):
            return (
                torch.empty(n, dtype=torch.uint8, device=device)
                if self.cuda_aware
                else _host_buffer(n, device)
            )

        self._send = [buffer(n) for n in up_frame]
        self._send_msgs = None if self.up_fixed else [buffer(m) for m in self.up_max]
        self._down_t = [buffer(n) for n in down_frame]
        self._down_msgs = None if self.down_fixed else [buffer(m) for m in self.down_max]
        self._frames_on_device = frames_on == device
        self._pending_send: list = []

    def _server_of(self, seg) -> int:
        return self.topology.servers[seg.owner]

    @staticmethod
    def _where(step: int, seg) -> str:
        return f" (step {step}, segment {seg.index})"

    # ---------------------------------------------------------------- worker side
    def message_buffer(self, seg) -> torch.Tensor | None:
        """Where this worker may encode segment ``seg``'s message in place (its slot of the send
        frame), or None when the frames live on another device than the data."""
        if not self._frames_on_device:
            return None
        return self._send[seg.index][UP:] if self.up_fixed else self._send_msgs[seg.index]

    def send_uplink(self, seg, record: np.ndarray, packed: torch.Tensor) -> None:
        """Post this worker's record + message of one segment (completed after the downlink)."""
        n = packed.numel()
        record["length"], record["segment"] = n, seg.index
        rec_bytes = torch.from_numpy(record.view(np.uint8).copy())
        if self.cuda_aware and packed.device.type == "cuda":
            torch.cuda.current_stream(packed.device).synchronize()
        frame = self._send[seg.index]
        frame[:UP].copy_(rec_bytes)
        target = frame[UP : UP + n] if self.up_fixed else self._send_msgs[seg.index][:n]
        if target.data_ptr() != packed.data_ptr():
            target.copy_(packed)
        if self.cuda_aware:
            torch.cuda.current_stream(self.device).synchronize()
        dest = self._server_of(seg)
        self._pending_send.append((self.comm.Isend(_mpi_buffer(frame), dest=dest, tag=seg.tag), dest))
        if not self.up_fixed:
            self._pending_send.append(
                (self.comm.Isend(_mpi_buffer(target), dest=dest, tag=seg.tag + 1), dest)
            )

    def progress(self) -> None:
        """Let the posted uplinks move (MPI progresses a large send only inside MPI calls): a
        non-blocking test, called after each segment posted during backward."""
        for request, _ in self._pending_send:
            request.Test()

    def finish_sends(self, step: int) -> None:
        """Complete this step's uplink sends (their frames are reused next step)."""
        if self._pending_send:
            requests, peers = zip(*self._pending_send, strict=True)
            wait_all(list(requests), self.timeout_s, "uplink send", list(peers), f" (step {step})")
            self._pending_send = []

    def recv_downlink(self, seg, step: int) -> tuple[np.void, torch.Tensor]:
        """The server's record and message of one segment, on this worker's device."""
        frame = self._down_t[seg.index]
        root = self._server_of(seg)
        req = self.comm.Ibcast(_mpi_buffer(frame), root=root)
        wait_all([req], self.timeout_s, "downlink broadcast", [root], self._where(step, seg))
        head = frame[:DOWN].cpu().numpy().view(DOWNLINK_RECORD)[0].copy()
        n = int(head["length"])
        if self.down_fixed:
            msg = frame[DOWN : DOWN + n]
        else:
            msg = self._down_msgs[seg.index][:n]
            req = self.comm.Ibcast(_mpi_buffer(msg), root=root)
            wait_all([req], self.timeout_s, "downlink broadcast (message)", [root], self._where(step, seg))
        if msg.device != self.device:
            msg = msg.to(self.device, non_blocking=True)
        return head, msg

    # ---------------------------------------------------------------- server side
    def post_uplinks(self) -> None:
        """Post the receives of every segment of this step, from every worker."""
        for seg in self.partition:
            rows = self._recv[seg.index]
            self._posted[seg.index] = [
                self.comm.Irecv(rows[i], source=r, tag=seg.tag) for i, r in enumerate(self.topology.workers)
            ]

    def gather_uplinks(self, seg, step: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Every worker's record and message of segment ``seg``, in worker order."""
        peers = list(self.topology.workers)
        rows = self._recv[seg.index]
        wait_all(self._posted[seg.index], self.timeout_s, "uplink gather", peers, self._where(step, seg))
        records = rows[:, :UP].copy().view(UPLINK_RECORD).reshape(-1)
        lengths = [int(n) for n in records["length"]]
        for rank, rec, n in zip(peers, records, lengths, strict=True):
            if n > self.up_max[seg.index] or int(rec["step"]) != step or int(rec["segment"]) != seg.index:
                raise RuntimeError(
                    f"rank {rank} sent a {n}-byte uplink for step {int(rec['step'])}, segment "
                    f"{int(rec['segment'])}; expected at most {self.up_max[seg.index]} bytes for step "
                    f"{step}, segment {seg.index}"
                )
        if self.up_fixed:
            return records, [torch.from_numpy(rows[i, UP : UP + n]) for i, n in enumerate(lengths)]
        bufs = self._recv_msgs[seg.index]
        reqs = [
            self.comm.Irecv(bufs[i][:n], source=r, tag=seg.tag + 1)
            for i, (r, n) in enumerate(zip(peers, lengths, strict=True))
        ]
        wait_all(reqs, self.timeout_s, "uplink gather (messages)", peers, self._where(step, seg))
        return records, [torch.from_numpy(bufs[i][:n]) for i, n in enumerate(lengths)]

    def broadcast_downlink(self, seg, step: int, flags: int, packed: torch.Tensor) -> None:
        packed = packed.cpu()
        n = packed.numel()
        head = np.zeros(1, dtype=DOWNLINK_RECORD)
        head["step"], head["flags"], head["length"], head["segment"] = step, flags, n, seg.index
        frame = self._down[seg.index]
        frame[:DOWN] = head.view(np.uint8)
        root = self._server_of(seg)
        if self.down_fixed:
            frame[DOWN : DOWN + n] = packed.numpy()
            req = self.comm.Ibcast(frame, root=root)
            wait_all([req], self.timeout_s, "downlink broadcast", None, self._where(step, seg))
            return
        req = self.comm.Ibcast(frame[:DOWN], root=root)
        wait_all([req], self.timeout_s, "downlink broadcast", None, self._where(step, seg))
        req = self.comm.Ibcast(packed.numpy(), root=root)
        wait_all([req], self.timeout_s, "downlink broadcast (message)", None, self._where(step, seg))
