"""Live metrics for the tools researchers watch while a run goes: ``trace.csv`` writes
``OUT/metrics/rank-R.csv`` (one ``step,wall_s,name,value`` line per number, flushed as it is
written, so ``tail -f`` and pandas see it grow) and ``trace.tensorboard`` writes TensorBoard event
files under ``OUT/tensorboard/rank-R`` (``tensorboard --logdir OUT/tensorboard``; written in this
thread, ``io.tensorboard_events``). The serving rank writes the run's numbers (loss, evaluations,
bytes, compression, phase times); a library worker writes its ``session.log`` numbers the moment
it logs them. The HDF5 trace stays the complete record; these are views of it while the run is live.

A resumed run continues its files as the trace does: it keeps the CSV's rows up to the step it
resumes from and drops the rest (written after that checkpoint by the run that died, they would
be written again), so every (step, name) is there once. A failed write (a full disk) is an
``OSError`` naming the file (``io.disk_errors``)."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from pathlib import Path

from qtrain.io.disk_errors import write_error

TENSORBOARD_MISSING = (
    "trace.tensorboard needs the tensorboard package: pip install tensorboard (or qtrain[tensorboard])"
)
HEADER = ["step", "wall_s", "name", "value"]


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def keep_rows_up_to(path: Path, step: int) -> int:
    """Rewrite the CSV at ``path`` with its rows of steps up to ``step`` (and its header); a last
    line cut short (a process killed while writing it) goes too. Streams, so a long run's file is
    never held whole; the file is replaced at once (a temporary beside it, renamed). Returns the
    rows dropped. A row that is not ``step,wall_s,name,value`` is a ``ValueError`` naming the line."""
    tmp = path.with_name(path.name + ".tmp")
    dropped = 0
    try:
        with (
            open(path, newline="", encoding="utf-8") as src,
            open(tmp, "w", newline="", encoding="utf-8") as dst,
        ):
            writer = csv.writer(dst)
            for n, row in enumerate(csv.reader(_whole_lines(src)), start=1):
                if n == 1 and row == HEADER:
                    writer.writerow(row)
                    continue
                try:
                    row_step = int(row[0])
                except (ValueError, IndexError):
                    raise ValueError(
                        f"{path} line {n}: {','.join(row)[:80]!r} is not a step,wall_s,name,value row (a "
                        "resumed run keeps this file's rows up to its step: move it aside to begin a new one)"
                    ) from None
                if row_step <= step:
                    writer.writerow(row)
                else:
                    dropped += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dropped


def _whole_lines(src):
    """The file's lines, all but a last one without its newline (cut short when it was written)."""
    for line in src:
        if line.endswith("\n"):
            yield line


class LiveMetrics:
    """This rank's live metric files (none when both switches are off: every call is free)."""

    def __init__(
        self,
        out_dir: Path | None,
        rank: int,
        csv_file: bool,
        tensorboard: bool,
        resume_step: int | None = None,
    ):
        """``resume_step``: the step a resumed run continues from (its files keep what came
        before; see the module docstring)."""
        self.t0 = time.perf_counter()
        self._csv = self._file = self._tb = None
        self.csv_path = None
        if out_dir is None:
            return
        if csv_file:
            self.csv_path = Path(out_dir) / "metrics" / f"rank-{rank}.csv"
            with self._named(self.csv_path, "writing live metrics"):
                self._open_csv(resume_step)
        if tensorboard:
            if not tensorboard_available():
                raise ValueError(TENSORBOARD_MISSING)
            from qtrain.io.tensorboard_events import EventFile

            purge = None if resume_step is None else resume_step + 1
            tb_dir = Path(out_dir) / "tensorboard" / f"rank-{rank}"
            with self._named(tb_dir, "writing TensorBoard events"):
                self._tb = EventFile(tb_dir, purge_from=purge)

    def _open_csv(self, resume_step: int | None) -> None:
        path = self.csv_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists() and path.stat().st_size:
            keep_rows_up_to(path, resume_step)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(HEADER)
            self._file.flush()

    @contextlib.contextmanager
    def _named(self, path: Path, what: str):
        """A failed write in the block: every file closed (quietly: they failed already) and one
        ``OSError`` naming the file (the one the OS named, else ``path``)."""
        try:
            yield
        except OSError as exc:
            self._abandon()
            raise write_error(exc, Path(exc.filename or path), what) from None

    def _abandon(self) -> None:
        for handle in (self._file, self._tb):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()  # a buffered file's close flushes first, fails, and closes anyway
        self._file = self._csv = self._tb = None

    @property
    def enabled(self) -> bool:
        return self._csv is not None or self._tb is not None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` (name -> number; None and NaN are left out) at ``step``."""
        if not self.enabled:
            return
        wall = round(time.perf_counter() - self.t0, 6)
        rows = [(k, float(v)) for k, v in values.items() if v is not None and float(v) == float(v)]
        if self._csv is not None:
            with self._named(self.csv_path, "writing live metrics"):
                self._csv.writerows([step, wall, k, v] for k, v in rows)
                self._file.flush()
        if self._tb is not None:
            with self._named(self._tb.path, "writing TensorBoard events"):
                self._tb.scalars(step, rows)

    def close(self) -> None:
        if self._file is not None:
            with self._named(self.csv_path, "writing live metrics"):
                self._file.close()
            self._file = self._csv = None
        if self._tb is not None:
            with self._named(self._tb.path, "writing TensorBoard events"):
                self._tb.close()
            self._tb = None
