import json
import os
import subprocess
import sys

from conftest import mpiexec_command

QTRAIN = [sys.executable, "-m", "qtrain"]


def train_command(np_: int, config: str, out, *sets: str, extra=()) -> list[str]:
    """``mpiexec -n NP python -m qtrain train CONFIG --out OUT --set ... EXTRA...``."""
    args = [*mpiexec_command(), "-n", str(np_), *QTRAIN, "train", config, "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return [*args, *extra]


def mpi_train(np_: int, config: str, out, *sets: str, extra=(), env=None, timeout=180):
    """Run ``train_command(...)`` to completion (``extra``: more CLI arguments, e.g. --resume auto)."""
    return subprocess.run(
        train_command(np_, config, out, *sets, extra=extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def simulate(config: str, workers: int, out, *sets: str):
    args = [*QTRAIN, "simulate", config, "--workers", str(workers), "--out", str(out), "-q"]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "summary.json").read_text())


def summary(out):
    return json.loads((out / "summary.json").read_text())
