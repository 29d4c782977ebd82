"""Outputs a run wrote, damaged afterwards or written to a full disk (issue 37, items 2 and 5): a
truncated trace is refused by every reader in one line naming the file (it once read as zeros),
a resumed run refuses it rather than writing zeros or beginning anew over it, a resumed run's
live CSV holds each (step, name) once, and a full disk under the live metrics is one line naming
the file (it was a thread's traceback, or a line without a file)."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from qtrain.io.live_metrics import HEADER, LiveMetrics, keep_rows_up_to
from qtrain.io.trace import TraceError, TraceWriter, read_metrics, read_timeline, read_trace

QTRAIN = [sys.executable, "-m", "qtrain"]


@pytest.fixture(scope="module")
def run_dir(real_checkpoint):
    """A real simulator run: checkpoints, trace.h5 (its /evals chunk is the file's last bytes)."""
    return real_checkpoint.parent.parent


def truncated(trace: Path, target: Path, length: int) -> Path:
    shutil.copyfile(trace, target)
    os.truncate(target, length)
    return target


def first_cut_dataset(trace: Path, length: int) -> tuple[str, int]:
    """(the first dataset, by name, whose stored data a file of ``length`` bytes cuts, its end)."""
    with h5py.File(trace, "r") as f:
        for name in sorted(f):
            ends = [0]
            f[name].id.chunk_iter(lambda info, ends=ends: ends.append(info.byte_offset + info.size))
            if max(ends) > length:
                return name, max(ends)
    raise AssertionError(f"nothing of {trace} lies beyond byte {length}")


def test_a_truncated_trace_is_refused_by_every_reader_naming_the_file(run_dir, tmp_path):
    """Cut in half, a trace once read as 'last evaluation at step 0: test loss 0.00000' with exit
    0: HDF5's SWMR readers skip the end-of-file check and read the missing bytes as zeros."""
    trace = run_dir / "trace.h5"
    half = os.path.getsize(trace) // 2
    cut = truncated(trace, tmp_path / "trace.h5", half)
    name, end = first_cut_dataset(trace, half)
    expected = (
        f"{cut}: /{name} is stored up to byte {end}, but the file ends at byte {half}: the file is "
        "truncated (HDF5 would read the missing data as zeros)"
    )
    for read in (read_trace, read_timeline, read_metrics):
        with pytest.raises(TraceError) as info:
            read(cut)
        assert str(info.value) == expected
    p = subprocess.run([*QTRAIN, "analyze", str(cut)], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"qtrain: error: {expected}\n")
    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    truncated(trace, other / "trace.h5", half)
    p = subprocess.run([*QTRAIN, "compare", str(other)], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == f"qtrain: error: {expected.replace(str(cut), str(other / 'trace.h5'))}\n"


def test_a_trace_cut_anywhere_is_refused_in_one_line_and_at_once(run_dir, tmp_path):
    """Cuts in its metadata too: HDF5's default retries of a bad metadata checksum (100, waiting
    longer each time) once kept a reader of a trace cut at byte 100 asleep for hours."""
    trace = run_dir / "trace.h5"
    size = os.path.getsize(trace)
    for length in (0, 100, 2000, size // 3, size - 1):
        cut = truncated(trace, tmp_path / "cut.h5", length)
        with pytest.raises(TraceError) as info:
            read_trace(cut)
        assert str(info.value).startswith(f"{cut}: ") and "\n" not in str(info.value)


def test_resuming_over_a_damaged_trace_refuses_and_keeps_the_file(run_dir, tmp_path):
    """A resumed run once read a truncated trace's evaluations as (0, 0.0, 0.0) and wrote them into
    its new trace; any trace that did not read was silently begun anew, its rows lost."""
    trace = run_dir / "trace.h5"
    cut = truncated(trace, tmp_path / "trace.h5", os.path.getsize(trace) // 2)
    before = cut.read_bytes()
    with h5py.File(trace, "r") as f:
        attrs = dict(f.attrs)
    with pytest.raises(TraceError) as info:
        TraceWriter(cut, attrs, flush_every=10, resume_step=4)
    with pytest.raises(TraceError) as plain:
        read_trace(cut)
    assert str(info.value) == (
        f"{plain.value}; resuming at step 4 continues this trace: move trace.h5 aside to begin a new one"
    )
    assert cut.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["trace.h5"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_a_resumed_run_keeps_each_live_csv_row_once(tmp_path):
    """After SIGKILL and --resume auto, metrics/rank-0.csv once held 4,205 rows against 3,919 for
    an uninterrupted run: the steps after the checkpoint twice (and a line cut short by the kill)."""
    live = LiveMetrics(tmp_path, 0, csv_file=True, tensorboard=False)
    for step in range(1, 11):
        live.scalars(step, {"loss": step / 10, "bytes": 100.0})
    live.close()
    path = tmp_path / "metrics" / "rank-0.csv"
    with open(path, "a", encoding="utf-8") as f:
        f.write("11,0.5,lo")  # the kill cut this row short
    resumed = LiveMetrics(tmp_path, 0, csv_file=True, tensorboard=False, resume_step=6)
    for step in range(7, 13):
        resumed.scalars(step, {"loss": step / 10, "bytes": 100.0})
    resumed.close()
    rows = _rows(path)
    assert rows[0] == HEADER
    assert [(int(r[0]), r[2], float(r[3])) for r in rows[1:]] == [
        (s, name, value) for s in range(1, 13) for name, value in (("loss", s / 10), ("bytes", 100.0))
    ]


def test_a_live_csv_row_that_does_not_parse_is_named_on_resume(tmp_path):
    path = tmp_path / "rank-0.csv"
    path.write_text("step,wall_s,name,value\n1,0.1,loss,2.0\nlorem,ipsum\n")
    with pytest.raises(ValueError) as info:
        keep_rows_up_to(path, 1)
    assert str(info.value) == (
        f"{path} line 3: 'lorem,ipsum' is not a step,wall_s,name,value row (a resumed run keeps this "
        "file's rows up to its step: move it aside to begin a new one)"
    )
    assert path.read_text().endswith("lorem,ipsum\n") and not list(tmp_path.glob("*.tmp"))


def test_a_resumed_runs_tensorboard_events_show_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    live = LiveMetrics(tmp_path, 0, csv_file=False, tensorboard=True)
    for step in range(1, 11):
        live.scalars(step, {"loss": 1.0})
    live.close()
    resumed = LiveMetrics(tmp_path, 0, csv_file=False, tensorboard=True, resume_step=6)
    for step in range(7, 13):
        resumed.scalars(step, {"loss": 2.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "rank-0"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (s, 1.0 if s <= 6 else 2.0) for s in range(1, 13)
    ]


def test_a_live_csv_on_a_full_device_names_the_file(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does: the run's line named no file."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    path = tmp_path / "metrics" / "rank-0.csv"
    path.parent.mkdir()
    path.symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        LiveMetrics(tmp_path, 0, csv_file=True, tensorboard=False)
    assert (info.value.strerror, info.value.filename) == (
        "writing live metrics: No space left on device",
        str(path),
    )


@pytest.mark.parametrize(
    "switch, line",
    [
        ("trace.csv", r"writing live metrics: No space left on device \(ENOSPC\): {out}/metrics/rank-0\.csv"),
        (
            "trace.tensorboard",
            r"writing TensorBoard events: No space left on device \(ENOSPC\): "
            r"{out}/tensorboard/rank-0/events\.out\.tfevents\.\d+\.[^/\s]+\.\d+\.0",
        ),
    ],
    ids=["csv", "tensorboard"],
)
def test_live_metrics_on_a_full_disk_are_one_line_naming_the_file(mount, switch, line):
    """Before: `qtrain: error: No space left on device (ENOSPC)` (trace.csv), and TensorBoard's
    writer thread's traceback before that line (trace.tensorboard)."""
    full = mount("full", "size=64k")
    out = full / "run"
    p = subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--out", str(out), "--quiet", "--set", f"{switch}=true"]
        + ["--set", "trace.enabled=false", "--set", "train.steps=3000", "--set", "checkpoint.every=0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-3000:]
    assert re.fullmatch(f"qtrain: error: {line.format(out=re.escape(str(out)))}\n", p.stderr), p.stderr
    assert not list(full.rglob("*.tmp"))


@pytest.mark.mpi
def test_mpi_resume_refuses_a_truncated_trace_on_every_rank(tmp_path):
    """Before: --resume auto exited 0, its trace holding six evaluations of (0, 0.0, 0.0)."""
    from mpi_helpers import mpi_train

    out = tmp_path / "run"
    sets = ("train.steps=20", "checkpoint.every=10", "train.eval_every=5")
    assert mpi_train(3, "configs/sgd.yaml", out, *sets).returncode == 0
    trace = out / "trace.h5"
    os.truncate(trace, os.path.getsize(trace) // 2)
    before = trace.read_bytes()
    with pytest.raises(TraceError) as plain:
        read_trace(trace)
    p = mpi_train(3, "configs/sgd.yaml", out, "train.steps=30", *sets[1:], extra=("--resume", "auto"))
    lines = [x for x in p.stderr.splitlines() if x.startswith("qtrain")]
    assert (p.returncode, lines) == (
        2,
        [
            f"qtrain: error: {plain.value}; resuming at step 20 continues this trace: move trace.h5 aside "
            "to begin a new one"
        ],
    ), p.stderr
    assert trace.read_bytes() == before
