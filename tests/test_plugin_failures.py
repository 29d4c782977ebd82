"""Plug-in models fail cleanly (issue 22, deliverable 5): a plug-in that raises, has no trainable
parameters, calls sys.exit(0) or keeps an integer Parameter gets one line naming the plug-in and
exit status 2, under ``simulate`` and under MPI (once three tracebacks)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mpi_helpers import mpi_train

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
CASES = {
    "raising": "model plug-in 'plugin_models:raising' raised KeyError: 'hidden_size'",
    "no_parameters": "model.name 'plugin_models:no_parameters' has no trainable parameters: nothing to train",
    "exiting": "model plug-in 'plugin_models:exiting' called sys.exit(0) while building the model",
    "integer_parameter": "model.name 'plugin_models:integer_parameter': parameter count is int64: qtrain "
    "trains floating-point (keep integer state in a buffer: register_buffer)",
}


def _simulate(out, *sets: str):
    """``qtrain simulate configs/default.yaml --quiet --out OUT --set ...``, with the plug-ins importable."""
    args = [sys.executable, "-m", "qtrain", "simulate", "configs/default.yaml", "--quiet", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=60)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_failing_plugin_is_one_line_under_simulate(tmp_path, name):
    p = _simulate(tmp_path, f"model.name=plugin_models:{name}", "train.steps=3")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.strip() == f"qtrain: error: {CASES[name]}", p.stderr
    assert not (tmp_path / "summary.json").exists()


def test_a_raising_plugin_is_one_line_from_rank_0_under_mpi(tmp_path):
    p = mpi_train(3, "configs/default.yaml", tmp_path / "o", "model.name=plugin_models:raising", env=ENV)
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert errors == [f"qtrain: error: {CASES['raising']}"], p.stderr


def test_a_plugin_that_hangs_meets_the_simulators_deadline(tmp_path):
    """``simulate`` had no deadline (a FIFO as data.path hung it forever); it now has MPI runs'
    per-phase ``runtime.timeout_s``, and the line names the phase."""
    p = _simulate(tmp_path, "model.name=plugin_models:hanging", "runtime.timeout_s=2")  # 60 s timeout
    assert p.returncode == 1
    assert re.fullmatch(
        r"qtrain: simulate watchdog: phase 'step 1: worker 0's forward and backward' has run \d+ s",
        p.stderr.strip(),
    ), p.stderr
