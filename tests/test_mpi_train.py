"""Real multi-rank runs under mpiexec: same math as the simulator, and the behaviour people rely on."""

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import mpiexec_command
from mpi_helpers import QTRAIN, mpi_train, simulate, summary, train_command

pytestmark = pytest.mark.mpi

STEPS = "train.steps=20"


SOAK = pytest.mark.soak  # make soak: cases whose paths the others cover in make test


@pytest.mark.parametrize(
    "config, sets",
    [
        pytest.param("configs/efficient-adam.yaml", [], marks=SOAK),  # also test_library_mpi's default job
        pytest.param("configs/qadam.yaml", ["algorithm.weight_quantization=true"], marks=SOAK),
        # qrda-adagrad under mpiexec: bit for bit against the simulator with 3 serving ranks in
        # test_mpi_servers.py, and resumed in test_mpi_resume_and_trace.py
        pytest.param("configs/qrda-adagrad.yaml", [], marks=SOAK),
        pytest.param("configs/ecq-sgd.yaml", ["runtime.segments=3", "model.hidden=[256]"], marks=SOAK),
        (
            "configs/qcmd-adagrad.yaml",
            ["runtime.segments=4", "algorithm.l1=0.01", "algorithm.uncompressed_steps=5"],
        ),
        ("configs/qadam.yaml", ["runtime.segments=3", "algorithm.weight_quantization=true"]),
        (
            "configs/efficient-adam.yaml",
            ["runtime.segments=5", "runtime.overlap=off", "algorithm.uncompressed_steps=4"],
        ),
        (
            "configs/ecq-sgd.yaml",
            ["runtime.segments=2", "uplink.norm=l2", "uplink.entropy=zstd", "downlink.entropy=zstd"],
        ),
    ],
    ids=[
        "efficient-adam",
        "qadam-weight-quantization",
        "qrda-adagrad",
        "ecq-sgd-3-segments",
        "qcmd-4-segments-variable-size-after-5-uncompressed",
        "qadam-weights-3-segments",
        "efficient-adam-5-segments-sent-after-backward-after-4-uncompressed",
        "ecq-sgd-entropy-coded-both-ways",
    ],
)
def test_four_ranks_match_three_simulated_workers(tmp_path, config, sets):
    """CPU workers send each segment from a backward hook (runtime.overlap=auto) except where the
    case turns it off: either way the result is the simulator's, bit for bit."""
    p = mpi_train(4, config, tmp_path / "mpi", STEPS, *sets)
    assert p.returncode == 0, p.stdout + p.stderr
    ref = simulate(config, 3, tmp_path / "sim", STEPS, *sets)
    assert summary(tmp_path / "mpi")["params_sha256"] == ref["params_sha256"]


def test_rank0_announces_the_plan_and_prints_a_final_table(tmp_path):
    p = mpi_train(3, "configs/default.yaml", tmp_path, STEPS)
    assert p.returncode == 0, p.stderr
    for needle in (
        "efficient-adam",
        "uplink   sign",
        "bits/element",
        "B fp32",
        "CUDA-aware MPI:",
        "ranks: 0: cpu",
        "test accuracy",
        "bytes up",
        "params sha256",
    ):
        assert needle in p.stdout


def no_progress_line(stdout: str) -> bool:
    """configs/default.yaml logs every 50 steps: a job that ends at step 5 prints no ``step`` line."""
    return not any(line.startswith("step ") for line in stdout.splitlines())


def test_a_rank_that_raises_ends_the_job_quickly_naming_it(tmp_path):
    """Quickly: the failing rank's abort ends the others, not a deadline of theirs (the default
    300 s; the launch's 120 s timeout catches a hang), before the job's first progress line."""
    p = mpi_train(3, "configs/default.yaml", tmp_path, env={"QTRAIN_INJECT_FAULT": "2:5:raise"}, timeout=120)
    assert p.returncode != 0
    said = {line for line in p.stderr.splitlines() if line.startswith("qtrain:")}
    assert said == {"qtrain: rank 2 failed: InjectedFault: injected fault on rank 2 at step 5"}, p.stderr
    assert "Stalled" not in p.stderr and no_progress_line(p.stdout), p.stdout + p.stderr
    assert "InjectedFault" in (tmp_path / "logs" / "rank-2.log").read_text()


@pytest.mark.parametrize(
    "rank, phase, silent",
    [
        (1, r"uplink gather' \(step 5, segment 0\)", "1"),
        (0, r"downlink broadcast' \(step 5, segment 0\)", "0"),
    ],
)
def test_a_rank_that_stops_answering_is_named_by_the_deadline(tmp_path, rank, phase, silent):
    p = mpi_train(
        3,
        "configs/default.yaml",
        tmp_path,
        "runtime.timeout_s=5",  # ranks start seconds apart on 2 loaded cores: 3 s once fired in start-up
        env={"QTRAIN_INJECT_FAULT": f"{rank}:5:hang"},
        timeout=120,
    )
    assert p.returncode != 0 and no_progress_line(p.stdout), p.stdout + p.stderr
    assert re.search(rf"Stalled: no progress for 5 s in phase '{phase} from rank\(s\) {silent}", p.stderr), (
        p.stderr
    )


def _gone(pid: int, wait_s: float = 10.0) -> bool:
    """The process has ended: no /proc entry, or a zombie its new parent has yet to reap."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_sigkill_or_sigstop_of_a_worker_ends_the_job_in_bounded_time(tmp_path, sig):
    """A SIGSTOPped worker once outlived mpiexec after the job was aborted (it never acts on the
    launcher's SIGTERM): the aborting rank now SIGKILLs its node's other ranks."""
    cmd = train_command(3, "configs/default.yaml", tmp_path, "train.steps=1000000", "runtime.timeout_s=10")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = None
    lines = []
    deadline = time.monotonic() + 90
    while pid is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"2: cpu on \S+ pid (\d+)", line)
        if m:
            pid = int(m.group(1))
    assert pid, "".join(lines)
    while not lines[-1].startswith("step ") and time.monotonic() < deadline:  # training is under way
        lines.append(proc.stdout.readline())
    assert lines[-1].startswith("step "), "".join(lines)[-2000:]
    os.kill(pid, sig)
    try:
        rest, _ = proc.communicate(timeout=60)  # bounded: a job that outlives it fails here
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # never leave a stopped process behind a failed test
    assert proc.returncode != 0
    output = "".join(lines) + rest
    assert _gone(pid), "the worker outlived mpiexec"
    if sig == signal.SIGSTOP:  # the job's own deadline names the silent rank
        assert re.search(r"Stalled: no progress for 10 s .* from rank\(s\) 2", output), output[-2000:]
        return
    # MPICH's hydra ends the job itself and says how; it may name another rank's PID (the first it
    # reaped), so the check is on the cause. Launchers that leave survivors running are covered by
    # qtrain's own deadlines (test_a_rank_that_stops_answering_is_named_by_the_deadline).
    assert "signal 9" in output or "rank(s) 2" in output, output[-2000:]


@pytest.mark.parametrize(  # K2-worker in make soak: K1-worker and K2-owner cover its two halves
    "servers, signalled",
    [(1, 1), pytest.param(2, 2, marks=SOAK), (2, 1)],
    ids=["K1-worker", "K2-worker", "K2-owner"],
)
def test_sigterm_on_one_rank_stops_all_ranks_at_a_step_boundary(tmp_path, servers, signalled):
    """The first worker (rank ``servers``) or, with two serving ranks, the second owner (rank 1) is
    signalled; the lead agrees the stop and the checkpoint joins both shards."""
    w = signalled
    sets = ["train.steps=1000000", "train.log_every=1", f"runtime.servers={servers}"]
    cmd = train_command(2 + servers, "configs/default.yaml", tmp_path, *sets)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, deadline = None, time.monotonic() + 90
    while pid is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        m = re.search(rf"{w}: cpu on \S+ pid (\d+)", line)
        pid = int(m.group(1)) if m else None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.startswith("step 3/"):
            break
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = summary(tmp_path)
    worker = w >= servers  # a worker's request comes in its record, an owner's is the lead's own
    assert s["stopped_early"] and s["stop_reason"] == (
        f"stop requested by rank(s) {w}" if worker else f"SIGTERM on rank {w}"
    )
    assert 3 <= s["steps"] < 1000000
    assert f"SIGTERM on rank {w}" in (tmp_path / "logs" / f"rank-{w}.log").read_text()
    assert (tmp_path / "checkpoints" / f"step-{s['steps']:07d}.h5").exists(), (
        "the agreed stop writes a checkpoint"
    )


def test_one_rank_is_refused_with_a_suggestion(tmp_path):
    p = subprocess.run(
        [*QTRAIN, "train", "configs/default.yaml", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("PMI_SIZE",)},
    )
    assert p.returncode == 2
    assert (
        "needs at least 2 MPI ranks" in p.stderr
        and "mpiexec -n 3" in p.stderr
        and "qtrain simulate" in p.stderr
    )


def test_singleton_worlds_from_a_mismatched_launcher_are_explained(tmp_path):
    p = subprocess.run(
        [*QTRAIN, "train", "configs/default.yaml", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OMPI_COMM_WORLD_SIZE": "3"},
    )
    assert p.returncode == 2 and "MPI sees a world of 1" in p.stderr


@pytest.mark.parametrize(
    "sets, message",
    [
        (["algorithm.name=nope"], "unknown algorithm 'nope'"),
        (["data.name=libsvm", "data.path=/no/such/file"], "does not exist"),
        (["runtime.servers=3"], "with 3 serving rank(s) needs at least 4 ranks, got 3"),
    ],
)
def test_bad_config_is_one_line_from_rank0_before_training(tmp_path, sets, message):
    p = mpi_train(3, "configs/default.yaml", tmp_path, *sets, timeout=120)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("qtrain: error:")]
    assert len(errors) == 1 and message in errors[0], p.stderr
    assert "Traceback" not in p.stderr and "step 1" not in p.stdout


def test_ranks_with_different_settings_are_refused(tmp_path):
    """Rank 1 differs in its arguments (``--resume auto`` given to rank 0 only once hung for 130 s
    in clock sync), rank 2 in its config."""
    base = [*QTRAIN, "train", "configs/default.yaml", "--out", str(tmp_path)]
    cmd = [*mpiexec_command(), "-n", "1", *base, "--resume", "auto", ":", "-n", "1", *base]
    cmd += [":", "-n", "1", *base, "--resume", "auto", "--set", "uplink.bucket=256"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Stalled" not in p.stderr, p.stderr  # refused, not ended by a deadline
    assert "ranks disagree on the resolved config, the command line or versions: rank(s) [1, 2]" in p.stderr
