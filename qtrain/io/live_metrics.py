"""Live metrics for the tools researchers watch while a run goes: ``trace.csv`` writes
``OUT/metrics/rank-R.csv`` (one ``step,wall_s,name,value`` line per number, flushed as it is
written, so ``tail -f`` and pandas see it grow) and ``trace.tensorboard`` writes TensorBoard event
files under ``OUT/tensorboard/rank-R`` (``tensorboard --logdir OUT/tensorboard``) through
``torch.utils.tensorboard``. The serving rank writes the run's numbers (loss, evaluations, bytes,
compression, phase times); a library worker writes its ``session.log`` numbers the moment it logs
them. The HDF5 trace stays the complete record; these are views of it while the run is live."""

from __future__ import annotations

import csv
import time
from pathlib import Path

TENSORBOARD_MISSING = (
    "trace.tensorboard needs the tensorboard package: pip install tensorboard (or qtrain[tensorboard])"
)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class LiveMetrics:
    """This rank's live metric files (none when both switches are off: every call is free)."""

    def __init__(self, out_dir: Path | None, rank: int, csv_file: bool, tensorboard: bool):
        self.t0 = time.perf_counter()
        self._csv = self._file = self._tb = None
        if out_dir is None:
            return
        if csv_file:
            path = Path(out_dir) / "metrics" / f"rank-{rank}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            self._file = open(path, "a", newline="", encoding="utf-8")  # a resumed run appends
            self._csv = csv.writer(self._file)
            if fresh:
                self._csv.writerow(["step", "wall_s", "name", "value"])
                self._file.flush()
        if tensorboard:
            if not tensorboard_available():
                raise ValueError(TENSORBOARD_MISSING)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard" / f"rank-{rank}"))

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
            self._csv.writerows([step, wall, k, v] for k, v in rows)
            self._file.flush()
        if self._tb is not None:
            for k, v in rows:
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
