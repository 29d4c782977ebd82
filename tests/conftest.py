import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent

# what every summary.json must hold (issue 3: simulator and MPI runs alike)
SUMMARY_KEYS = (
    "algorithm",
    "workers",
    "steps",
    "final_train_loss",
    "final_test_accuracy",
    "bytes_up",
    "bytes_down",
    "bytes_fp32_equivalent",
    "wall_seconds",
    "params_sha256",
)


def mpiexec_command() -> list[str]:
    """The launcher the Makefile chose (QTRAIN_MPIEXEC), else the venv's mpiexec."""
    env = os.environ.get("QTRAIN_MPIEXEC")
    if env:
        return env.split()
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return [str(local)]
    found = shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec found")
    return [found]


@pytest.fixture
def mpiexec():
    return mpiexec_command()


# ---- pinned numerics (tests/test_pinned_params.py): what each pinned case was checked against,
# printed at the end of every run, so that a case that could not be checked is never silent.
PINNED_REPORT = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def pinned_report(pytestconfig) -> list:
    return pytestconfig.stash.setdefault(PINNED_REPORT, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(PINNED_REPORT, [])
    if not lines:
        return
    terminalreporter.write_sep("-", "pinned numerics")
    for line in dict.fromkeys(lines):
        terminalreporter.write_line(f"pinned numerics: {lines.count(line)} case(s) {line}")


# ---- a real run's checkpoint, for the tests that damage or craft one
@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory):
    """A checkpoint of a real run (ecq-sgd: server and worker state, error buffers, statistics)."""
    out = tmp_path_factory.mktemp("run")
    p = subprocess.run(
        [sys.executable, "-m", "qtrain", "simulate", "configs/ecq-sgd.yaml", "--workers", "2", "--quiet"]
        + ["--set", "train.steps=4", "--set", "checkpoint.every=4", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    (path,) = (out / "checkpoints").glob("step-*.h5")
    return path


@pytest.fixture
def mount(tmp_path):
    """``mount(name, options)``: a tmpfs (e.g. ``size=64k``, a full disk) at ``tmp_path/name``,
    unmounted afterwards; skips where mounting is not allowed (not root)."""
    mounted = []

    def make(name: str, options: str):
        d = tmp_path / name
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@pytest.fixture
def handlers():
    """Restore the stop signals' handlers a test installed (``StopRequest.install``)."""
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
