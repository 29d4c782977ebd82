"""``qtrain bench network --backend``: the same ``qtrain train`` over MPI and over torch.distributed
(gloo, one process per rank in its namespace) in one command: the two end with the same parameters,
the results name each run's backend and give the torch/MPI ratio; a failing torch rank ends the
comparison in one line with the network torn down; refusals before anything is built."""

import json
import os
import subprocess
import sys

import pytest
from test_bench_network import run_bench
from test_netem import namespaces, root  # noqa: F401 - the root fixture

from qtrain.bench.network import backend_comparison, table

QTRAIN = [sys.executable, "-m", "qtrain"]


def tiny(out, backend: str, steps: int = 6) -> list[str]:
    """efficient-adam with a 64-32-10 MLP on 200 Mbit/s links, 2 workers, no DDP peer."""
    args = ["configs/efficient-adam.yaml", "--workers", "2", "--steps", str(steps), "--warmup", "2"]
    args += ["--bandwidth", "200mbit", "--set", "model.hidden=[32]", "--eval-every", "3", "--peers", ""]
    return [*QTRAIN, "bench", "network", *args, "--backend", backend, "--out", str(out)]


def qtrain_run(name: str, backend: str, median: float, sha: str) -> dict:
    return {
        "name": name,
        "kind": "qtrain",
        "config": "configs/adam.yaml",
        "backend": backend,
        "params_sha256": sha,
        "seconds_per_step": {"median_s": median, "min_s": median, "max_s": median},
        "wire_bytes_per_step": {"up": 1e6, "down": 1e6},
        "final_test_accuracy": 0.5,
        "time_to_target_s": None,
    }


def test_the_comparison_pairs_each_config_under_mpi_with_its_torch_run():
    runs = [qtrain_run("adam", "mpi", 0.5, "a"), qtrain_run("adam-torch", "torch", 0.6, "a")]
    runs.append({"name": "ddp", "kind": "ddp", "seconds_per_step": runs[0]["seconds_per_step"]})
    (row,) = backend_comparison(runs)
    assert row["mpi"] == "adam" and row["torch"] == "adam-torch" and row["params_equal"]
    assert row["torch_over_mpi"] == pytest.approx(1.2)
    runs[1]["params_sha256"] = "b"
    assert not backend_comparison(runs)[0]["params_equal"]
    assert backend_comparison(runs[:1]) == []  # no torch run: nothing to compare
    results = {
        "link": {"rate_bps": 1e9, "measured_bps": 9.5e8},
        "workers": 4,
        "cores": 2,
        "steps": 30,
        "warmup": 5,
        "runs": runs[:2],
        "backend_comparison": backend_comparison(runs),
    }
    assert table(results)[-2:] == [
        "torch.distributed (gloo) against MPI, the same config and steps:",
        "  adam: s/step median 0.500 (mpi), 0.600 (torch): torch/MPI 1.20x; params_sha256 DIFFERENT",
    ]


@pytest.mark.parametrize(
    "argv, line",
    [
        (["configs/adam.yaml", "--backend", "gloo"], "--backend 'gloo': choose mpi, torch or both"),
        (
            ["--script", "x.py", "--backend", "torch"],
            "--backend torch goes with config files; --script runs the script under MPI",
        ),
    ],
    ids=["unknown", "with-script"],
)
def test_refusals_in_one_line(tmp_path, argv, line):
    p = subprocess.run(
        [*QTRAIN, "bench", "network", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [f"qtrain: error: {line}"]


@pytest.mark.netns
@pytest.mark.mpi
def test_torch_and_mpi_runs_of_one_config_end_with_the_same_parameters(root, tmp_path):  # noqa: F811
    out = tmp_path / "bench"
    p, mine = run_bench(tiny(out, "both"), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["backends"] == ["mpi", "torch"]
    mpi, torch = res["runs"]
    assert (mpi["name"], mpi["backend"], torch["name"], torch["backend"]) == (
        "efficient-adam",
        "mpi",
        "efficient-adam-torch",
        "torch",
    )
    assert mpi["params_sha256"] == torch["params_sha256"] and len(mpi["params_sha256"]) == 64
    assert mpi["final_test_accuracy"] == torch["final_test_accuracy"]
    for run in (mpi, torch):
        assert 0 < run["seconds_per_step"]["median_s"] and run["wire_bytes_per_step"]["up"] > 0
    # the torch run is gloo's: its plan says so, and its bytes crossed the serving rank's link
    output = (out / "runs" / "efficient-adam-torch" / "bench-output.txt").read_text()
    assert "  backend: torch " in output and "gloo" in output
    assert torch["wire_bytes_per_step"]["up"] >= torch["packed_bytes_per_step"]["up"]
    (row,) = res["backend_comparison"]
    ratio = torch["seconds_per_step"]["median_s"] / mpi["seconds_per_step"]["median_s"]
    assert row["params_equal"] and row["torch_over_mpi"] == pytest.approx(ratio)
    assert f"torch/MPI {ratio:.2f}x; params_sha256 equal" in p.stdout
    assert not any(n.startswith(mine) for n in namespaces()), "the network was torn down"


# make soak (make test's budget): the fail-fast teardown of run_per_rank's torch ranks
@pytest.mark.netns
@pytest.mark.mpi
@pytest.mark.soak
def test_a_failing_torch_rank_is_one_line_and_the_network_is_torn_down(root, tmp_path):  # noqa: F811
    p, mine = run_bench(
        tiny(tmp_path / "b", "torch", steps=8),
        timeout=300,
        env={**os.environ, "QTRAIN_INJECT_FAULT": "1:3:raise"},
    )
    assert p.returncode == 1, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("qtrain: error: qtrain run efficient-adam-torch failed (exit codes ["), last
    assert "see " in last and (tmp_path / "b" / "runs" / "efficient-adam-torch" / "bench-output.txt").exists()
    assert not any(n.startswith(mine) for n in namespaces())
    assert not (tmp_path / "b" / "results.json").exists(), "no results from a failed comparison"
