"""TensorBoard event files written in the caller's thread (``trace.tensorboard``).

``torch.utils.tensorboard.SummaryWriter`` writes from a background thread: on a full disk that
thread died with a traceback on stderr, and the run's next write raised ``OSError`` without a file
name. Here each ``scalars`` call encodes its events (TensorBoard's own protobufs and record
framing), writes and flushes them at once, so a failed write is the caller's ``OSError``, with the
file, when it happens. A resumed run starts its file with a ``SessionLog.START`` at the step it
resumes from (what ``SummaryWriter(purge_step=...)`` writes): TensorBoard then hides the events of
the run before it that lie after that step (written after the checkpoint the run resumed from),
so each step is shown once."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

# event files of one directory sort by name: the time, then a counter within this process
_files_made = 0


class EventFile:
    """One ``events.out.tfevents.*`` file in ``log_dir``, opened now."""

    def __init__(self, log_dir: Path, purge_from: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        global _files_made
        self._event, self._summary = Event, Summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{_files_made}"
        _files_made += 1
        self.path = log_dir / f"events.out.tfevents.{stamp}"
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._records = RecordWriter(self._file)
        first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_from is not None:
            first.append(Event(step=purge_from, session_log=SessionLog(status=SessionLog.START)))
        self._write(first)

    def scalars(self, step: int, rows: list[tuple[str, float]]) -> None:
        """One event per (tag, value) at ``step``, written and flushed now."""
        wall, value = time.time(), self._summary.Value
        self._write(
            self._event(
                wall_time=wall, step=step, summary=self._summary(value=[value(tag=k, simple_value=v)])
            )
            for k, v in rows
        )

    def _write(self, events) -> None:
        for event in events:
            self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._file.close()
