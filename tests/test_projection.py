"""The what-if projection of `qtrain analyze --project`: its arithmetic on known numbers, what it
reads from a trace (with and without interface counters), its input checks, and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qtrain.analysis.projection import FRAMING, PerfModel, parse_project, tree_depth
from qtrain.io.trace import TRACE_DTYPE

MODEL = PerfModel(
    compute_s=0.1,
    worker_encode_s=0.02,
    worker_decode_s=0.01,
    server_decode_per_uplink_s=0.005,
    server_encode_s=0.03,
    up_bytes=1e6,
    down_bytes=2e6,
    workers=4,
    measured_step_s=0.5,
    bytes_source="interface counters",
)


def test_tree_depth_is_the_binomial_broadcast_depth():
    assert [tree_depth(n) for n in (1, 2, 3, 4, 7, 8, 63, 64)] == [1, 2, 2, 3, 3, 4, 6, 7]


def test_prediction_arithmetic():
    p = MODEL.predict(8e8, workers=64, latency_s=1e-4)  # 100 MB/s
    parts = p["parts"]
    assert parts["uplink_s"] == pytest.approx(64 * 1e6 / 1e8 + 1e-4)
    assert parts["server_decode_s"] == pytest.approx(64 * 0.005)
    assert parts["downlink_s"] == pytest.approx(7 * (2e6 / 1e8 + 1e-4))
    assert p["step_s"] == pytest.approx(0.1 + 0.02 + 0.6401 + 0.32 + 0.03 + 0.1407 + 0.01)
    assert MODEL.predict(8e8)["workers"] == 4


def synthetic_trace(wire: bool) -> tuple[np.ndarray, dict]:
    rows = []
    for step in range(1, 11):
        srv = np.zeros(1, dtype=TRACE_DTYPE)
        srv["step"], srv["role"], srv["wall_s"] = step, 0, 0.5 * step
        srv["decode_s"], srv["encode_s"] = 0.02, 0.03
        srv["bytes_recv"], srv["bytes_sent"] = 4 * 1000, 4 * 500
        if wire:
            srv["wire_recv_bytes"], srv["wire_sent_bytes"] = 4 * 1100, 3 * 600
        rows.append(srv)
        w = np.zeros(4, dtype=TRACE_DTYPE)
        w["step"], w["role"], w["rank"] = step, 1, np.arange(1, 5)
        w["compute_s"], w["encode_s"], w["decode_s"] = 0.1, 0.2, 0.05
        rows.append(w)
    return np.concatenate(rows), {"workers": 4, "segments": 1}


@pytest.mark.parametrize("wire", [True, False], ids=["interface-counters", "packed"])
def test_model_from_a_trace(wire):
    steps, attrs = synthetic_trace(wire)
    m = PerfModel.from_trace(steps, attrs, warmup=3)
    assert (m.compute_s, m.worker_encode_s, m.worker_decode_s) == pytest.approx((0.1, 0.2, 0.05))
    assert m.server_decode_per_uplink_s == pytest.approx(0.005) and m.server_encode_s == pytest.approx(0.03)
    assert m.measured_step_s == pytest.approx(0.5)
    if wire:
        assert (m.up_bytes, m.down_bytes) == pytest.approx((1100, 600))  # 3 = tree_depth(4) copies sent
    else:
        assert m.up_bytes == pytest.approx((1000 + 264) * FRAMING)
        assert m.down_bytes == pytest.approx((500 + 24) * FRAMING)
    with pytest.raises(ValueError, match="too few"):
        PerfModel.from_trace(steps, attrs, warmup=9)


def test_parse_project():
    assert parse_project("bandwidth=10gbit,workers=64,latency=0.1ms") == pytest.approx(
        {"bandwidth_bps": 1e10, "workers": 64, "latency_s": 1e-4}
    )
    for bad, match in (
        ("workers=4", "bandwidth= is required"),
        ("bandwidth=fast", "bandwidth"),
        ("bandwidth=1gbit,workers=0", "unknown or bad item"),
        ("bandwidth=1gbit,nodes=3", "unknown or bad item"),
        ("10gbit", "key=value"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_project(bad)


def test_cli_projects_a_simulated_run(tmp_path):
    run = [sys.executable, "-m", "qtrain"]
    sim = [
        "simulate",
        "configs/default.yaml",
        "--workers",
        "2",
        "--set",
        "train.steps=12",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert subprocess.run([*run, *sim], capture_output=True, timeout=120).returncode == 0
    p = subprocess.run(
        [*run, "analyze", str(tmp_path), "--project", "bandwidth=10gbit,workers=64", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    pred = json.loads(p.stdout)["projection"]["predicted"]
    assert pred["workers"] == 64 and pred["step_s"] == pytest.approx(sum(pred["parts"].values()))
    bad = subprocess.run(
        [*run, "analyze", str(tmp_path), "--project", "workers=3"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "bandwidth= is required" in bad.stderr


def test_the_models_record_sizes_are_the_transports():
    from qtrain.analysis.projection import DOWNLINK_RECORD_BYTES, UPLINK_RECORD_BYTES
    from qtrain.engine.records import DOWNLINK_RECORD, UPLINK_RECORD

    assert (UPLINK_RECORD_BYTES, DOWNLINK_RECORD_BYTES) == (UPLINK_RECORD.itemsize, DOWNLINK_RECORD.itemsize)


def test_k_servers_divide_the_servers_parts_but_not_a_workers_link():
    one = MODEL.predict(8e8, workers=64)["parts"]
    four = MODEL.predict(8e8, workers=64, servers=4)["parts"]
    assert four["server_decode_s"] == pytest.approx(one["server_decode_s"] / 4)
    assert four["server_encode_s"] == pytest.approx(one["server_encode_s"] / 4)
    assert four["uplink_s"] == pytest.approx(one["uplink_s"] / 4)  # 64 / 4 > 1 uplinks per link
    assert four["downlink_s"] == pytest.approx(7 / 4 * 2e6 / 1e8)  # h(64) = 7 copies over 4 links
    eight = MODEL.predict(8e8, workers=64, servers=8)["parts"]
    assert eight["downlink_s"] == pytest.approx(2e6 / 1e8)  # 7 / 8 < 1: a worker's own link bounds
    wide = MODEL.predict(8e8, workers=2, servers=8)["parts"]
    assert wide["uplink_s"] == pytest.approx(1e6 / 1e8)  # each worker still sends a whole model
    assert parse_project("bandwidth=1gbit,servers=8")["servers"] == 8


def test_colocated_ranks_carry_the_other_owners_shares_and_serve_one_nth():
    """Co-located, each of N ranks sends and receives (N-1)/N of a message each way, decodes one
    whole uplink's worth (N uplinks of 1/N) and runs 1/N of the rule, beside its own work."""
    p = MODEL.predict(8e8, workers=4, latency_s=1e-4, servers="colocated")
    parts = p["parts"]
    assert p["servers"] == "colocated"
    assert parts["uplink_s"] == pytest.approx(3 / 4 * 1e6 / 1e8 + 1e-4)
    assert parts["downlink_s"] == pytest.approx(3 / 4 * 2e6 / 1e8 + 2 * 1e-4)  # h(3) = 2 hops
    assert parts["server_decode_s"] == pytest.approx(0.005)
    assert parts["server_encode_s"] == pytest.approx(0.03 / 4)
    assert p["step_s"] == pytest.approx(sum(parts.values()))
    assert parse_project("bandwidth=1gbit,servers=colocated")["servers"] == "colocated"
    with pytest.raises(ValueError, match="servers=K or colocated"):
        parse_project("bandwidth=1gbit,servers=colo")


SUMMED = ("decode_s", "encode_s", "bytes_recv", "bytes_sent", "wire_recv_bytes", "wire_sent_bytes")


def test_a_two_server_trace_gives_one_servers_model():
    steps, attrs = synthetic_trace(wire=True)
    server = steps[steps["role"] == 0]
    halves = []
    for rank in (0, 1):  # the same step split over two serving ranks
        part = server.copy()
        part["rank"] = rank
        for column in (
            "decode_s",
            "encode_s",
            "bytes_recv",
            "bytes_sent",
            "wire_recv_bytes",
            "wire_sent_bytes",
        ):
            part[column] = server[column] / 2
        halves.append(part)
    split = np.concatenate([steps[steps["role"] == 1], *halves])
    one = PerfModel.from_trace(steps, attrs, warmup=2)
    two = PerfModel.from_trace(split, {**attrs, "server_ranks": [0, 1]}, warmup=2)
    assert two.servers == 2
    for field in (
        "server_decode_per_uplink_s",
        "server_encode_s",
        "up_bytes",
        "down_bytes",
        "measured_step_s",
    ):
        assert getattr(two, field) == pytest.approx(getattr(one, field)), field


def test_the_evaluations_traffic_is_left_out_of_the_bytes():
    """With K > 1 an evaluation also gathers the master copy over the serving links, which the
    other owners count in the next step's rows: given the trace's evaluation rows, the bytes are
    those of the other steps."""
    steps, attrs = synthetic_trace(wire=True)
    plain = PerfModel.from_trace(steps, attrs, warmup=3)
    spiked = steps.copy()
    at = (spiked["role"] == 0) & np.isin(spiked["step"], [6, 9])  # after evaluations at 5 and 8
    spiked["wire_sent_bytes"][at] += 8_000_000  # the other owner's master shard
    evals = np.zeros(2, dtype=[("step", "<u4"), ("test_loss", "<f8"), ("test_accuracy", "<f8")])
    evals["step"] = [5, 8]
    assert PerfModel.from_trace(spiked, attrs, warmup=3).down_bytes > plain.down_bytes + 1e5
    m = PerfModel.from_trace(spiked, attrs, warmup=3, evals=evals)
    assert (m.up_bytes, m.down_bytes) == pytest.approx((plain.up_bytes, plain.down_bytes))
    every = np.zeros(10, dtype=evals.dtype)
    every["step"] = np.arange(1, 11)  # every step evaluates: nothing left out
    assert PerfModel.from_trace(spiked, attrs, warmup=3, evals=every).down_bytes > plain.down_bytes
