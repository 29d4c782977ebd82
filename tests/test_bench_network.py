"""``qtrain bench network``: the arithmetic of its results, its refusals, and one small real run
(2 workers, a few steps, a small model) whose results file is checked field by field."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_netem import namespaces, root  # noqa: F401 - the root fixture

from qtrain.bench.network import peer_hook, step_stats, time_to_accuracy, with_link_time

QTRAIN = [sys.executable, "-m", "qtrain"]


def small_comparison(out, steps: int, peers: str = "", *extra: str) -> list[str]:
    """efficient-adam (and ``peers``) on 200 Mbit/s links with 2 workers."""
    args = ["configs/efficient-adam.yaml", "--workers", "2", "--steps", str(steps), "--bandwidth", "200mbit"]
    return [*QTRAIN, "bench", "network", *args, "--peers", peers, *extra, "--out", str(out)]


def run_bench(argv: list[str], timeout: float, **kw) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``qtrain bench network`` and return its result and the namespace prefix its process used
    (``qtb<pid>``), so that a test checks its own namespaces, not another program's."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), f"qtb{proc.pid}-"


def test_step_stats_leave_out_the_warm_up():
    ends = [5.0, 5.5, 6.0, 6.1, 6.3, 6.6, 7.0]  # steps 1..7 ended at these times
    s = step_stats(ends, warmup=2)
    assert s == pytest.approx({"median_s": 0.25, "min_s": 0.1, "max_s": 0.4})
    with pytest.raises(ValueError, match="too few"):
        step_stats(ends[:3], warmup=2)


def test_time_to_accuracy():
    evals = [{"wall_s": 1.0, "test_accuracy": 0.5}, {"wall_s": 2.0, "test_accuracy": 0.9}]
    assert time_to_accuracy(evals, 0.8) == 2.0 and time_to_accuracy(evals, 0.5) == 1.0
    assert time_to_accuracy(evals, 0.95) is None and time_to_accuracy(evals, None) is None


def test_link_time_is_the_busier_direction_at_the_shaped_rate():
    run = {"wire_bytes_per_step": {"up": 2.5e6, "down": 1.25e6}}
    assert with_link_time(dict(run), 1e9)["link_s"] == pytest.approx(0.02)
    assert with_link_time(dict(run), None)["link_s"] is None


def test_peer_names():
    assert [peer_hook(p) for p in ("ddp", "ddp-fp16", "ddp-powersgd:4")] == ["none", "fp16", "powersgd:4"]
    for bad in ("ddp-powersgd", "ddp-powersgd:0", "horovod"):
        with pytest.raises(ValueError, match="unknown peer"):
            peer_hook(bad)


def test_refuses_in_one_line_without_ip_and_tc(tmp_path):
    p = subprocess.run(
        [*QTRAIN, "bench", "network", "configs/default.yaml", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(tmp_path)},
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "qtrain: error: qtrain bench network needs ip and tc (Debian: apt-get install iproute2)"
    ]


@pytest.mark.netns
@pytest.mark.mpi
def test_a_small_comparison_end_to_end(root, tmp_path):  # noqa: F811
    out = tmp_path / "bench"
    extra = ["--warmup", "2", "--set", "model.hidden=[128]", "--target-accuracy", "0.2"]
    p, mine = run_bench(small_comparison(out, 8, "ddp-fp16", *extra), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "link check:" in p.stdout and "efficient-adam" in p.stdout and "ddp-fp16" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.png").stat().st_size > 10_000
    assert res["workers"] == 2 and res["steps"] == 8 and res["cores"] == os.cpu_count()
    assert res["host"]["cores"] == os.cpu_count() and res["host"]["copy_gbps"] > 0
    assert f"host: {res['host']['cpu_model']} ({res['host']['cpu_capability']}, " in p.stdout
    assert abs(res["link"]["measured_bps"] - 200e6) <= 0.1 * 200e6
    qt, ddp = res["runs"]
    assert (qt["name"], qt["kind"], ddp["name"], ddp["kind"]) == (
        "efficient-adam",
        "qtrain",
        "ddp-fp16",
        "ddp",
    )
    for run in (qt, ddp):
        s = run["seconds_per_step"]
        assert 0 < s["min_s"] <= s["median_s"] <= s["max_s"]
        assert run["wire_bytes_per_step"]["up"] > 0 and run["wire_bytes_per_step"]["down"] > 0
        assert 0 <= run["final_test_accuracy"] <= 1 and run["evals"]
    # the wire carries at least the packed messages (plus headers, records and protocol traffic)
    assert qt["wire_bytes_per_step"]["up"] >= qt["packed_bytes_per_step"]["up"]
    assert set(qt["phases_s"]) >= {"server_wait_s", "worker_compute_s", "worker_comm_s"}
    assert not any(n.startswith(mine) for n in namespaces()), "the network was torn down"


@pytest.mark.netns
@pytest.mark.mpi
def test_two_serving_ranks_each_count_their_own_link(root, tmp_path):  # noqa: F811
    from qtrain.io.trace import read_trace

    out = tmp_path / "bench"
    p, _ = run_bench(small_comparison(out, 6, "", "--warmup", "2", "--servers", "2"), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 workers, 2 qtrain server(s)" in p.stdout
    res = json.loads((out / "results.json").read_text())
    (qt,) = res["runs"]
    assert res["servers"] == qt["servers"] == 2
    steps, _, _ = read_trace(out / "runs" / "efficient-adam" / "trace.h5")
    late = steps[(steps["role"] == 0) & (steps["step"] > 2)]
    for rank in (0, 1):  # each serving rank's row counts the bytes of its own link
        mine = late[late["rank"] == rank]
        assert len(mine) == 4 and (mine["wire_recv_bytes"] > 0).all() and (mine["wire_sent_bytes"] > 0).all()
    summed, busiest = qt["wire_bytes_per_step"], qt["wire_bytes_busiest_link"]
    for way in ("up", "down"):
        assert summed[way] / 2 <= busiest[way] < summed[way]
    assert summed["up"] >= qt["packed_bytes_per_step"]["up"]
    assert qt["link_s"] == pytest.approx(8 * max(busiest.values()) / 200e6)
    refused = subprocess.run(
        small_comparison(out, 8, "", "--set", "runtime.servers=2"), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "qtrain: error: --set runtime.servers: use --servers, which also gives each serving rank its link"
    ]


@pytest.mark.netns
@pytest.mark.mpi
def test_colocated_shards_run_on_as_many_links_as_workers(root, tmp_path):  # noqa: F811
    """--servers colocated: 2 ranks that train and serve, each counting its own link (the run's
    server rows), the table says so; a bad --servers value is one line."""
    from qtrain.io.trace import read_trace

    out = tmp_path / "bench"
    p, _ = run_bench(small_comparison(out, 6, "", "--warmup", "2", "--servers", "colocated"), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 workers, qtrain's shards co-located" in p.stdout
    res = json.loads((out / "results.json").read_text())
    (qt,) = res["runs"]
    assert res["servers"] == qt["servers"] == "colocated"
    steps, _, _ = read_trace(out / "runs" / "efficient-adam" / "trace.h5")
    late = steps[(steps["role"] == 0) & (steps["step"] > 2)]
    for rank in (0, 1):
        mine = late[late["rank"] == rank]
        assert len(mine) == 4 and (mine["wire_recv_bytes"] > 0).all() and (mine["wire_sent_bytes"] > 0).all()
    for bad, line in [
        (
            ["--servers", "many"],
            "qtrain: error: --servers 'many': a count of serving ranks >= 1 or colocated",
        ),
        (
            ["--servers", "colocated", "--workers", "1"],
            "qtrain: error: --servers colocated needs at least 2 workers, got 1",
        ),
    ]:
        refused = subprocess.run(
            small_comparison(out, 8, "", *bad), capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [line], refused.stderr


@pytest.mark.netns
@pytest.mark.mpi
def test_a_failing_run_is_one_line_and_the_network_is_torn_down(root, tmp_path):  # noqa: F811
    p, mine = run_bench(
        small_comparison(tmp_path / "b", steps=8),
        timeout=300,
        env={**os.environ, "QTRAIN_INJECT_FAULT": "1:3:raise"},
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("qtrain: error: qtrain run efficient-adam failed (rc")
    assert not any(n.startswith(mine) for n in namespaces())
    assert not (tmp_path / "b" / "results.json").exists(), "no results from a failed comparison"


@pytest.mark.netns
@pytest.mark.mpi
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_comparison_tears_the_network_down(root, tmp_path, sig):  # noqa: F811
    proc = subprocess.Popen(
        small_comparison(tmp_path / "b", steps=100_000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    mine = f"qtb{proc.pid}-"
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and not (tmp_path / "b" / "runs" / "efficient-adam" / "trace.h5").exists()
    ):
        time.sleep(0.2)
    if proc.poll() is not None:  # e.g. its link check refused a machine too busy to hold 200 Mbit/s
        err = proc.communicate()[1]
        pytest.fail(f"the comparison ended (rc {proc.returncode}) before its run began: {err}")
    assert any(n.startswith(mine) for n in namespaces()), "the run is under way"
    os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted: the emulated network was torn down" in err
    assert not any(n.startswith(mine) for n in namespaces())
