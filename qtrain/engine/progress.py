"""Rank 0's live view: a rich progress bar on a terminal, one log line per ``log_every`` steps
otherwise (batch jobs, pipes).

``train.progress=auto`` draws the bar when rank 0's stdout is a terminal, except under Open MPI,
whose launcher gives every rank a pseudo-terminal even when its own output goes to a file or a
pipe (the bar would end up there as escape sequences)."""

from __future__ import annotations

import math
import sys


class ProgressReporter:
    def __init__(self, steps: int, log_every: int, echo, mode: str = "auto", mpi_library: str = ""):
        self.steps, self.log_every, self.echo = steps, log_every, echo
        self.bar = None
        use_bar = mode == "bar" or (mode == "auto" and sys.stdout.isatty() and "Open MPI" not in mpi_library)
        if use_bar:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=steps or None, info="")
            self.bar.start()

    def update(
        self,
        step: int,
        loss: float,
        accuracy: float | None,
        up_bytes: float,
        down_bytes: float,
        fp32_bytes: float,
    ) -> None:
        """``up_bytes``, ``down_bytes``: this step's bytes per worker each way; ``fp32_bytes``: the
        same step's in fp32 (the ratios of both ways are shown)."""
        acc = f" acc {accuracy:.4f}" if accuracy is not None else ""
        shown = f"loss {loss:.4f} " if math.isfinite(loss) else ""  # NaN: the loop reported no loss
        ratio_up = fp32_bytes / up_bytes if up_bytes else float("inf")
        ratio_down = fp32_bytes / down_bytes if down_bytes else float("inf")
        info = (
            f"{shown}{acc.lstrip() + ' ' if acc else ''}up {up_bytes:.0f} B/worker ({ratio_up:.1f}x < fp32) "
            f"down {down_bytes:.0f} B/worker ({ratio_down:.1f}x < fp32)"
        )
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.steps:
            total = f"/{self.steps}" if self.steps else ""  # a library run's loop decides its length
            self.echo(f"step {step}{total} {info}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
