"""The run recorder: one object that watches a run, shared by the simulator and the MPI server.

It owns
- the timing phases: ``with rec.phase("aggregate", seg):`` times the block into this step's phase
  totals and tells the watchdog (when there is one) which phase of which step and segment is running;
- the run statistics (:class:`~qtrain.engine.accounting.RunStats`: bytes each way, evaluations,
  the last batch loss), with ``state_dict``/``load_state_dict`` for checkpoints;
- the trace rows (a server row and one row per worker each step; a worker's communication and
  decode times of step t arrive with its records of step t+1, so its rows are held back one step
  and completed then: the one place that holds trace rows back);
- progress on the terminal and the evaluation cadence (every ``train.eval_every`` steps, the last
  step and an agreed stop);
- the summary a run returns.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from qtrain.codecs import get_codec
from qtrain.engine.accounting import RunStats, trace_attrs
from qtrain.engine.progress import ProgressReporter
from qtrain.engine.snapshots import is_eval_step
from qtrain.io.live_metrics import LiveMetrics
from qtrain.io.trace import TraceWriter, server_row, worker_rows

# server phases and the trace column each one fills in the server's row
SERVER_COLUMNS = {
    "gather": "wait_s",
    "aggregate": "decode_s",
    "server_step": "encode_s",
    "broadcast": "comm_s",
    "evaluate": "compute_s",
    "aggregate_cpu": "decode_cpu_s",
}
# phases also timed in this process's CPU seconds (all its threads), as the phase NAME_cpu: on a
# crowded node the wall time of a compute phase also counts the time another process held the core
CPU_TIMED = frozenset({"aggregate"})


@contextlib.contextmanager
def timed(add_time, name: str):
    """Add the block's wall seconds to phase ``name`` (``add_time(name, seconds)``), and for a phase
    in ``CPU_TIMED`` its CPU seconds to ``NAME_cpu``."""
    c0 = time.process_time() if name in CPU_TIMED else None
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add_time(name, time.perf_counter() - t0)
        if c0 is not None:
            add_time(f"{name}_cpu", time.process_time() - c0)


@dataclass
class WorkerReport:
    """One step's measurements of every worker (arrays in worker order), compression statistics as
    sums of squares over the worker's segments. A worker's communication and decode times arrive
    a step late, with its next records: ``prev_comm_s``/``prev_decode_s`` are the previous step's."""

    loss: np.ndarray
    compute_s: np.ndarray
    encode_s: np.ndarray
    err_sq: np.ndarray
    ref_sq: np.ndarray
    ef_sq: np.ndarray
    prev_comm_s: np.ndarray
    prev_decode_s: np.ndarray

    @property
    def rel_error(self) -> np.ndarray:
        err, ref = np.asarray(self.err_sq, dtype=np.float64), np.asarray(self.ref_sq, dtype=np.float64)
        return np.sqrt(np.divide(err, ref, out=np.zeros_like(err), where=ref > 0))

    @property
    def ef_norm(self) -> np.ndarray:
        return np.sqrt(self.ef_sq)


class Recorder:
    def __init__(
        self,
        setup,
        topology,
        partition,
        echo,
        out_dir=None,
        watchdog=None,
        progress: str = "lines",
        mpi_library: str = "",
        start_step: int = 0,
        counters=None,
    ):
        cfg = setup.cfg
        self.setup, self.topology, self.watchdog = setup, topology, watchdog
        self.steps = setup.steps
        self.stats = RunStats(partition, topology.num_workers)
        self.trace = None
        if out_dir is not None and cfg.trace.enabled:
            self.trace = TraceWriter(
                out_dir / "trace.h5",
                trace_attrs(setup, topology, partition),
                cfg.trace.flush_every,
                resume_step=start_step or None,
                echo=echo,
            )
        self.progress = ProgressReporter(setup.steps, cfg.train.log_every, echo, progress, mpi_library)
        self.live = LiveMetrics(
            out_dir, topology.server, cfg.trace.csv, cfg.trace.tensorboard, resume_step=start_step or None
        )
        self.start = self.step = start_step
        self.counters = counters  # io.net_counters.NetCounters of this rank's link, or None
        self.t0 = time.perf_counter()
        self.totals: dict[str, float] = {}
        self.times: dict[str, float] = {}
        self.worker_totals = np.zeros(3)
        self._last_eval: tuple[int, dict] | None = None  # (step, test-split result)
        self._pending = None  # worker rows waiting for their late communication times
        self._up = np.zeros(topology.num_workers, dtype=np.int64)
        self._down = 0
        self._shards: list = []  # other serving ranks: (rank, up sizes, down bytes, times, wire)
        self._fp32 = partition.wire_bytes(get_codec("none"))  # one worker's step in fp32, each way

    # ------------------------------------------------------------------ a step
    def begin_step(self, step: int) -> None:
        self.step, self.times = step, {}
        self._up[:] = 0
        self._down = 0
        self._shards = []

    def enter(self, what: str) -> None:
        """Tell the watchdog what runs now (outside a timed phase)."""
        if self.watchdog is not None:
            self.watchdog.enter(what)

    def add_time(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to this step's phase ``name`` (timed before the step began)."""
        self.times[name] = self.times.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str, seg=None):
        """Time a block into this step's phase ``name``; the watchdog learns what is running."""
        if self.watchdog is not None:
            where = f" (segment {seg.index})" if seg is not None else ""
            self.watchdog.enter(f"step {self.step}: {name}{where}")
        with timed(self.add_time, name):
            yield

    def uplinks(self, sizes: list[int], seg) -> None:
        """One segment's uplink messages, in worker order."""
        self.stats.add_uplinks(sizes, seg.numel)
        self._up += sizes

    def downlink(self, size: int, seg) -> None:
        self.stats.add_downlink(size, seg.numel)
        self._down += size

    def add_shard(self, rank: int, up: list, down: list, times: dict, wire=(0, 0)) -> None:
        """Another serving rank's part of this step (``runtime.servers`` > 1): its messages count in
        the run's statistics and the workers' rows (``up``: (sizes in worker order, numel) per
        segment; ``down``: (size, numel)); it gets a trace row of its own with its bytes, times and
        its link's counted bytes ``wire`` (received, sent)."""
        sizes = np.zeros(self.topology.num_workers, dtype=np.int64)
        for s, numel in up:
            self.stats.add_uplinks(s, numel)
            sizes += s
        for size, numel in down:
            self.stats.add_downlink(size, numel)
        self._shards.append((rank, sizes, sum(size for size, _ in down), times, wire))

    def eval_due(self, stopping: bool = False) -> bool:
        return is_eval_step(self.setup.cfg, self.step, self.steps, stopping)

    def evaluate(self, model, dataset) -> dict:
        """Evaluate ``model`` on the test split now, and record it in the summary and trace."""
        return self.evaluate_with(lambda: model.evaluate(dataset.x_test, dataset.y_test, dataset.task))

    def evaluate_with(self, run) -> dict:
        """Record ``run()``'s evaluation ({"loss", "accuracy"?, ...}) of this step."""
        with self.phase("evaluate"):
            ev = run()
        self.stats.add_eval(self.step, ev, self.trace)
        self._last_eval = (self.step, ev)
        self.live.scalars(self.step, {f"test/{k}": v for k, v in ev.items()})
        return ev

    def last_eval_at(self, step: int) -> dict | None:
        """The evaluation of ``step``, when the last one was of it."""
        return self._last_eval[1] if self._last_eval is not None and self._last_eval[0] == step else None

    @property
    def accuracy(self) -> float | None:
        """Test accuracy of the last evaluation (None before the first, or for regression)."""
        return None if self._last_eval is None else self._last_eval[1].get("accuracy")

    def end_step(self, workers: WorkerReport, server_stats: dict) -> None:
        """Statistics, trace rows and progress of the step that just ended."""
        self.stats.last_batch_loss = float(np.mean(workers.loss))
        for name, dt in self.times.items():
            self.totals[name] = self.totals.get(name, 0.0) + dt
        self.worker_totals += [
            workers.compute_s.mean(),
            workers.encode_s.mean(),
            np.mean(workers.prev_comm_s),
        ]
        if self.trace is not None:
            self._trace_step(workers, server_stats)
        # this step's bytes per worker each way (a resumed run's totals hold steps it did not run)
        up_all, down_all = self._all_bytes()
        up, down = float(up_all.mean()), float(down_all)
        self.progress.update(self.step, self.stats.last_batch_loss, self.accuracy, up, down, self._fp32)
        if self.live.enabled:
            self._live_step(workers, up, down)

    def _all_bytes(self) -> tuple[np.ndarray, int]:
        """Each worker's uplink bytes and one worker's downlink bytes of this step, every owner's."""
        up = self._up + sum((s[1] for s in self._shards), np.zeros_like(self._up))
        return up, self._down + sum(s[2] for s in self._shards)

    def _live_step(self, workers: WorkerReport, up: float, down: float) -> None:
        values = {
            "train/batch_loss": self.stats.last_batch_loss,
            "bytes/up_per_worker": up,
            "bytes/down_per_worker": down,
            "compression/up": self._fp32 / up if up else None,
            "compression/down": self._fp32 / down if down else None,
            "time/worker_compute_s": float(workers.compute_s.mean()),
            "time/worker_encode_s": float(workers.encode_s.mean()),
            "time/worker_comm_s": float(np.mean(workers.prev_comm_s)),  # of the step before
        }
        values.update({f"time/server_{name}_s": dt for name, dt in self.times.items()})
        self.live.scalars(self.step, values)

    def _trace_step(self, workers: WorkerReport, server_stats: dict) -> None:
        ranks = list(self.topology.workers)
        if self._pending is not None:
            self._pending["comm_s"], self._pending["decode_s"] = workers.prev_comm_s, workers.prev_decode_s
            self.trace.add_rows(self._pending)
        times = {column: self.times.get(name, 0.0) for name, column in SERVER_COLUMNS.items()}
        times["wall_s"] = time.perf_counter() - self.t0
        wire = self.counters.delta() if self.counters is not None else (0, 0)
        rel, ef = workers.rel_error, workers.ef_norm
        loss = self.stats.last_batch_loss
        own = [(self.topology.server, self._up, self._down, times, wire)]
        for rank, up, down, shard_times, shard_wire in self._shards:  # every serving rank's own row
            columns = {column: shard_times.get(name, 0.0) for name, column in SERVER_COLUMNS.items()}
            own.append((rank, up, down, {**columns, "wall_s": times["wall_s"]}, shard_wire))
        for rank, up, down, row_times, row_wire in own:
            self.trace.add_rows(
                server_row(self.step, rank, up, down, ranks, row_times, loss, rel, ef, server_stats, row_wire)
            )
        up_all, down_all = self._all_bytes()
        rows = worker_rows(
            self.step,
            ranks,
            up_all,
            down_all,
            workers.compute_s,
            workers.encode_s,
            workers.loss,
            rel,
            ef,
            server_stats,
        )
        rows["wall_s"] = times["wall_s"]
        self._pending = rows  # completed by the next step's records, a checkpoint or close()
        self.trace.maybe_flush(self.step)

    def complete_held_rows(self, comm_s: np.ndarray, decode_s: np.ndarray) -> None:
        """Write the held-back worker rows of this step now, with their communication times (MPI
        checkpoints: a run resumed from this step must find them in the trace)."""
        if self.trace is not None and self._pending is not None:
            self._pending["comm_s"], self._pending["decode_s"] = comm_s, decode_s
            self.trace.add_rows(self._pending)
        self._pending = None

    def flush(self) -> None:
        if self.trace is not None:
            self.trace.flush()

    # ------------------------------------------------------------------ the end
    def close(self, last_comm_s=None, last_decode_s=None) -> None:
        """Stop the progress display; complete the held-back rows (MPI: with the workers' final
        report) and close the trace and the live metrics."""
        self.progress.close()
        self.live.close()
        if self.trace is None:
            return
        if self._pending is not None and last_comm_s is not None:
            self._pending["comm_s"], self._pending["decode_s"] = last_comm_s, last_decode_s
            self.trace.add_rows(self._pending)
        self.trace.close()

    def seconds_per_step(self) -> dict[str, float]:
        done = max(self.step - self.start, 1)
        out = {f"{name}_s": total / done for name, total in self.totals.items()}
        w = self.worker_totals / done
        out.update({"worker_compute_s": w[0], "worker_encode_s": w[1], "worker_comm_s": w[2]})
        return out

    def summary(self, model, dataset, sha: str, **extra) -> dict:
        """Final evaluation on both splits and the run's summary. The test split was evaluated at
        the last step already (``eval_due`` is true there): that result is the final one, the same
        numbers a second pass over the same parameters would give."""
        if self.watchdog is not None:
            self.watchdog.enter("final evaluation")
        final = self.last_eval_at(self.step)
        if final is None:
            final = model.evaluate(dataset.x_test, dataset.y_test, dataset.task)
        train = model.evaluate(dataset.x_train, dataset.y_train, dataset.task)
        return self.stats.summary(self.setup, self.step, final, train, sha, **extra)

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.stats.load_state_dict(sd)
