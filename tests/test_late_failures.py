"""Failures after start-up end every rank with one line naming the rank and the reason (issue #14
item 6): a read-only --out, an unwritable rank log, a full disk while training and while resuming.
File systems are small tmpfs mounts (root); where mounting is not allowed those cases skip."""

import os
import subprocess
import sys

import pytest
from mpi_helpers import mpi_train

QTRAIN = [sys.executable, "-m", "qtrain"]


def one_line(stderr: str) -> str:
    lines = [x for x in stderr.strip().splitlines() if x.startswith("qtrain:")]
    assert "Traceback" not in stderr, stderr[-3000:]
    return "\n".join(lines)


def test_a_read_only_out_is_one_line_before_training(mount):
    ro = mount("ro", "ro,size=1m")
    p = subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--out", str(ro)], capture_output=True, text=True
    )
    assert (
        p.returncode == 2 and one_line(p.stderr) == f"qtrain: error: output directory '{ro}' is not writable"
    )


@pytest.mark.mpi
def test_mpi_read_only_out_and_unwritable_rank_log(mount, tmp_path):
    ro = mount("ro", "ro,size=1m")
    p = mpi_train(3, "configs/sgd.yaml", ro, "train.steps=20", timeout=60)
    assert (
        p.returncode == 2 and one_line(p.stderr) == f"qtrain: error: output directory '{ro}' is not writable"
    )
    out = tmp_path / "logs-blocked"
    (out / "logs" / "rank-0.log").mkdir(parents=True)  # the server's log cannot be opened
    p = mpi_train(3, "configs/sgd.yaml", out, "train.steps=20", timeout=60)
    # the workers once waited for rank 0 until their own deadline: now its abort ends them
    assert p.returncode != 0 and "Stalled" not in p.stderr, p.stderr
    assert "qtrain: rank 0 failed: Is a directory (EISDIR)" in p.stderr and "rank-0.log" in p.stderr


@pytest.mark.parametrize(
    "size, what",
    [
        ("8k", "creating the trace: No space left on device (ENOSPC): trace.h5"),
        ("400k", "writing the trace: No space left on device (ENOSPC): trace.h5"),
        ("700k", "writing checkpoint: No space left on device (ENOSPC): checkpoints/step-0000010.h5"),
    ],
)
def test_a_full_disk_is_named_exits_2_and_leaves_no_temporary_file(mount, size, what):
    """The disk fills while the trace is created, while it is written, while a checkpoint is: one
    line, exit status 2. When HDF5 cannot close the trace, the library's teardown used to crash
    the process (exit status 139, SIGSEGV) after that line, or print HDF5's tracebacks."""
    full = mount("full", f"size={size}")
    file = what.rsplit(": ", 1)[1]
    p = subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--out", str(full), "--quiet"]
        + ["--set", "model.hidden=[512]", "--set", "train.steps=40", "--set", "checkpoint.every=10"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert p.stderr.strip().splitlines() == [f"qtrain: error: {what[: -len(file)]}{full / file}"], p.stderr
    assert not list(full.rglob("*.tmp"))


@pytest.mark.mpi
def test_mpi_full_disk_while_training_and_while_resuming(mount):
    full = mount("full", "size=700k")
    sets = ("model.hidden=[512]", "train.steps=60", "checkpoint.every=10", "checkpoint.keep=1")
    p = mpi_train(3, "configs/sgd.yaml", full, *sets, timeout=120)
    assert p.returncode != 0 and "Stalled" not in p.stderr, p.stderr  # ended by rank 0's abort
    assert "qtrain: rank 0 failed: " in p.stderr and "No space left on device (ENOSPC)" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not list(full.rglob("*.tmp"))
    # a run with checkpoints, then the disk fills up: resuming says so, and does not hang
    roomy = mount("roomy", "size=8m")
    assert mpi_train(3, "configs/sgd.yaml", roomy, *sets, timeout=120).returncode == 0
    subprocess.run(["dd", "if=/dev/zero", f"of={roomy / 'filler'}", "bs=64k"], capture_output=True)
    more = ("model.hidden=[512]", "train.steps=120", "checkpoint.every=10", "checkpoint.keep=1")
    p = mpi_train(3, "configs/sgd.yaml", roomy, *more, extra=("--resume", "auto"), timeout=120)
    assert p.returncode != 0 and "Stalled" not in p.stderr, p.stderr
    assert "No space left on device (ENOSPC)" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not list(roomy.rglob("*.tmp"))


@pytest.mark.parametrize("mpi_abort", ["returns", "raises"])
def test_a_rank_whose_mpi_abort_comes_back_still_ends_at_once(mpi_abort):
    """When another rank's abort already tears the job down, MPI_Abort can return (or raise): the
    rank once went on into the CLI and printed an AttributeError traceback after its one-line
    error (a CI run of test_an_mpi_run_that_diverges_ends_every_rank_naming_the_step)."""
    body = "pass" if mpi_abort == "returns" else "raise RuntimeError('MPI is finalizing')"
    script = (
        "from qtrain.runtime import services\n"
        "services.ABORT_GRACE_S = 0\n"
        f"class Comm:\n    def Abort(self, code):\n        {body}\n"
        "services.abort(Comm())\n"
        "print('went on after the abort')\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (1, "", "")


def test_an_aborting_rank_kills_its_nodes_other_ranks_even_stopped_ones():
    """A SIGSTOPped worker once outlived mpiexec after an abort (a stopped process never acts on
    the launcher's SIGTERM; MPICH's hydra also SIGKILLs, other launchers may not). The aborting
    rank SIGKILLs the ranks start-up found on its node, and only while their pid still has the
    start time recorded then (a reused pid is left alone)."""
    import signal

    from qtrain.runtime import services

    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        start = services.process_start(stopped.pid)
        services.set_local_peers(
            [(stopped.pid, start), (other.pid, "not its start time"), (os.getpid(), "x")]
        )
        assert services._local_peers == [(stopped.pid, start), (other.pid, "not its start time")]
        services._kill_local_peers()
        assert stopped.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None  # another process behind a recorded pid: untouched
    finally:
        services.set_local_peers([])
        for p in (stopped, other):
            p.kill()
            p.wait()
