import json
import subprocess
import sys

import pytest


def qtrain(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "qtrain", *args], capture_output=True, text=True, timeout=timeout
    )


def test_simulate_writes_config_and_summary(tmp_path):
    out = tmp_path / "run"
    p = qtrain(
        "simulate", "configs/default.yaml", "--workers", "3", "--set", "train.steps=20", "--out", str(out)
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 3 and summary["steps"] == 20
    assert "workers: 3" in (out / "config.yaml").read_text()
    assert "test accuracy" in p.stdout and summary["params_sha256"][:16] in p.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (["simulate", "configs/default.yaml", "--set", "algorithm.name=foo"], "unknown algorithm 'foo'"),
        (["simulate", "configs/default.yaml", "--set", "data.name=npz"], "needs data.path"),
        (["simulate", "configs/default.yaml", "--workers", "0"], "--workers must be at least 1"),
        (
            ["simulate", "configs/default.yaml", "--set", "data.name=libsvm", "--set", "data.path=/no/such"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    p = qtrain(*args, "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qtrain: error:") and message in lines[0], p.stderr
