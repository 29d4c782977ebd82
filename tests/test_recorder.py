"""The run recorder: phases tell the watchdog, statistics survive a checkpoint, trace rows are
written once per step and rank (a step late for workers under MPI), evaluations follow the cadence."""

import time

import h5py
import numpy as np
import pytest

from qtrain.analysis.trace_report import report as trace_report
from qtrain.config import load_config
from qtrain.engine import recorder as recorder_module
from qtrain.engine.partition import Partition
from qtrain.engine.recorder import Recorder, WorkerReport
from qtrain.engine.setup import build_setup
from qtrain.engine.topology import Topology
from qtrain.io.trace import STEPS_BEFORE_DECODE_CPU, read_trace


class FakeWatchdog:
    def __init__(self):
        self.phases = []

    def enter(self, phase):
        self.phases.append(phase)


def recorder(tmp_path, *sets, workers=2, watchdog=None):
    cfg = load_config("configs/default.yaml", ["train.steps=6", "train.eval_every=3", *sets])
    setup = build_setup(cfg, workers)
    part = Partition.build(1000, (512, 512), 2)
    rec = Recorder(setup, Topology.parameter_server(workers + 1), part, lambda _: None, tmp_path, watchdog)
    return rec, part


def report(workers, value: float) -> WorkerReport:
    """A step's worker measurements; its communication times are the previous step's (they arrive
    with the next step's records, in the simulator as under MPI)."""
    a = np.full(workers, value)
    return WorkerReport(a, a, a, a, a * 4, a, prev_comm_s=a * 10, prev_decode_s=a * 100)


class FakeClock:
    """The recorder's ``time`` module with a wall clock (``perf_counter``) and a CPU clock
    (``process_time``) that move only when the test says (``advance``): phase times are then exact
    numbers, on a loaded host as on an idle one. Other names are the real module's."""

    def __init__(self):
        self.wall, self.cpu = 1000.0, 50.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def advance(self, wall: float, cpu: float = 0.0) -> None:
        self.wall += wall
        self.cpu += cpu

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(recorder_module, "time", fake)
    return fake


def test_phases_tell_the_watchdog_and_add_up(tmp_path, clock):
    dog = FakeWatchdog()
    rec, part = recorder(tmp_path, watchdog=dog)
    rec.begin_step(1)
    for seg, (wall, cpu) in zip(part, [(0.25, 0.125), (0.5, 0.0625)], strict=True):
        with rec.phase("aggregate", seg):
            clock.advance(wall, cpu)
    clock.advance(8.0, 4.0)  # between phases: counted in none
    with rec.phase("evaluate"):
        clock.advance(0.375, 0.375)
    assert dog.phases == [
        "step 1: aggregate (segment 0)",
        "step 1: aggregate (segment 1)",
        "step 1: evaluate",
    ]
    # each phase's segments add up; aggregate is also timed in CPU seconds (CPU_TIMED), evaluate not
    assert rec.times == {"aggregate": 0.75, "aggregate_cpu": 0.1875, "evaluate": 0.375}


def test_the_server_decode_column_holds_cpu_seconds_and_decode_s_wall_seconds(tmp_path, clock):
    """Two segments' decodes that each compute for 0.03125 CPU seconds and are off the core for
    0.125 s more (as when another process holds it): decode_s counts both, decode_cpu_s only the
    computing."""
    rec, part = recorder(tmp_path)
    rec.begin_step(1)
    for seg in part:
        rec.uplinks([10, 20], seg)
        with rec.phase("aggregate", seg):
            clock.advance(0.03125 + 0.125, 0.03125)
        rec.downlink(5, seg)
    rec.end_step(report(2, 1), {})
    rec.close(np.zeros(2), np.zeros(2))
    rows, _, _ = read_trace(tmp_path / "trace.h5")
    server, workers = rows[rows["role"] == 0], rows[rows["role"] == 1]
    assert (server["decode_s"][0], server["decode_cpu_s"][0]) == (0.3125, 0.0625)
    assert list(workers["decode_cpu_s"]) == [0.0, 0.0]


def test_a_trace_written_before_decode_cpu_s_is_read_with_zeros_there(tmp_path):
    rec, part = recorder(tmp_path)
    for step in range(1, 3):
        run_step(rec, part, step)
    rec.close(np.zeros(2), np.zeros(2))
    path = tmp_path / "trace.h5"
    today, _, _ = read_trace(path)
    with h5py.File(path, "a") as f:  # the file as qtrain of 2026-12-03 wrote it
        rows, units = f["steps"][()], f["steps"].attrs["units"]
        del f["steps"]
        f.create_dataset(
            "steps", data=rows[list(STEPS_BEFORE_DECODE_CPU.names)].astype(STEPS_BEFORE_DECODE_CPU)
        )
        f["steps"].attrs["units"] = units
    older, evals, attrs = read_trace(path)
    assert older.dtype == today.dtype and not older["decode_cpu_s"].any()
    for name in STEPS_BEFORE_DECODE_CPU.names:
        assert np.array_equal(older[name], today[name]), name
    # qtrain analyze leaves out what the older trace did not measure, rather than print 0
    assert "decode_cpu_s" not in trace_report(older, evals, attrs)["server_seconds_per_step"]
    measured = today.copy()
    measured["decode_cpu_s"][measured["role"] == 0] = 0.002
    seconds = trace_report(measured, evals, attrs)["server_seconds_per_step"]
    assert seconds["decode_cpu_s"] == pytest.approx(0.002)


def run_step(rec, part, step: int) -> None:
    """One step's traffic: two workers' uplinks and one downlink per segment, then the step's end."""
    rec.begin_step(step)
    for seg in part:
        rec.uplinks([10, 20], seg)
        rec.downlink(5, seg)
    rec.end_step(report(2, step), {"down_rel_error": 0.5})


def test_evaluation_cadence(tmp_path):
    rec, _ = recorder(tmp_path)
    due = []
    for step in range(1, 7):
        rec.begin_step(step)
        due.append(rec.eval_due(stopping=step == 2))
    assert due == [False, True, True, False, False, True]


def test_trace_holds_every_step_and_rank_once(tmp_path):
    rec, part = recorder(tmp_path)
    for step in range(1, 7):
        run_step(rec, part, step)
    rec.close(np.array([70.0, 70.0]), np.array([700.0, 700.0]))
    rows, _, attrs = read_trace(tmp_path / "trace.h5")
    assert attrs["segments"] == 2 and attrs["server_ranks"] == [0]
    assert sorted(zip(rows["step"].tolist(), rows["rank"].tolist(), strict=True)) == [
        (s, r) for s in range(1, 7) for r in range(3)
    ]
    workers = rows[rows["role"] == 1]
    step3 = workers[workers["step"] == 3]
    assert list(step3["rank"]) == [1, 2] and list(step3["bytes_sent"]) == [20, 40]
    # comm_s of step 3 arrives with step 4 (prev_comm_s = 40); the last step's with close()
    assert step3["comm_s"][0] == 40 and list(workers[workers["step"] == 6]["comm_s"]) == [70.0, 70.0]
    assert step3["up_rel_error"][0] == pytest.approx(0.5), "sqrt(err_sq / ref_sq) = sqrt(1/4)"
    server = rows[rows["role"] == 0]
    assert list(server["bytes_recv"]) == [60] * 6 and list(server["bytes_sent"]) == [20] * 6


def test_statistics_survive_a_state_dict_round_trip(tmp_path):
    rec, part = recorder(tmp_path)
    rec.begin_step(1)
    for seg in part:
        rec.uplinks([10, 20], seg)
        rec.downlink(5, seg)
    rec.end_step(report(2, 1.0), {})
    (tmp_path / "b").mkdir()
    again, _ = recorder(tmp_path / "b")
    again.load_state_dict(rec.state_dict())
    assert again.state_dict() == rec.state_dict()
    assert again.stats.bytes_up == 60 and again.stats.messages_up == 4 and again.stats.fp32_up > 0


class CountingModel:
    """Evaluates to a different loss each call and records which split it was given."""

    def __init__(self, dataset):
        self.dataset, self.calls = dataset, []

    def evaluate(self, x, y, task):
        self.calls.append("test" if x is self.dataset.x_test else "train")
        return {"loss": float(len(self.calls)), "accuracy": 0.5}


@pytest.mark.parametrize("eval_at_the_end", [True, False])
def test_the_final_test_evaluation_is_the_last_steps_not_a_second_pass(tmp_path, eval_at_the_end):
    rec, part = recorder(tmp_path)
    ds = rec.setup.dataset
    model = CountingModel(ds)
    for step in range(1, 7):
        run_step(rec, part, step)
        if rec.eval_due() and (step < 6 or eval_at_the_end):
            rec.evaluate(model, ds)
    s = rec.summary(model, ds, "sha")
    if eval_at_the_end:
        assert model.calls == ["test", "test", "train"]  # steps 3 and 6, then the train split once
        assert s["final_test_loss"] == 2.0 == s["evals"][-1]["test_loss"] and s["final_train_loss"] == 3.0
    else:  # the last evaluation is older than the last step: the test split is evaluated again
        assert model.calls == ["test", "test", "train"] and s["final_test_loss"] == 2.0
        assert s["evals"][-1]["test_loss"] == 1.0 and s["final_train_loss"] == 3.0
    rec.close()


def test_live_metrics_grow_as_csv_and_tensorboard_events(tmp_path):
    """trace.csv and trace.tensorboard: the serving rank's numbers of every step (loss, bytes,
    compression both ways, phase times) and every evaluation, readable while the run goes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qtrain.config import load_config
    from qtrain.engine.simulator import simulate

    sets = ["train.steps=20", "train.eval_every=10", "trace.csv=true", "trace.tensorboard=true"]
    summary = simulate(load_config("configs/default.yaml", sets), 2, tmp_path / "run", log=lambda _: None)
    rows = (tmp_path / "run" / "metrics" / "rank-0.csv").read_text().splitlines()
    assert rows[0] == "step,wall_s,name,value"
    names = {line.split(",")[2] for line in rows[1:]}
    assert {"train/batch_loss", "bytes/up_per_worker", "compression/down", "test/accuracy"} <= names
    assert {"time/worker_compute_s", "time/server_aggregate_s"} <= names
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "rank-0"))
    events.Reload()
    accuracy = [(e.step, e.value) for e in events.Scalars("test/accuracy")]
    assert [s for s, _ in accuracy] == [10, 20]
    assert abs(accuracy[-1][1] - summary["final_test_accuracy"]) < 1e-6
    assert len(events.Scalars("train/batch_loss")) == 20
