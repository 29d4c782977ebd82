"""The emulated cluster network of ``qtrain bench network``: parsing, refusals, the link check,
teardown (after success, a failure inside, and a failure half-way through building), and a real
MPI run across the namespaces that equals the simulator."""

import os
import shutil
import subprocess

import pytest
from mpi_helpers import QTRAIN, simulate, summary

from qtrain.bench import netem
from qtrain.bench.netem import EmulatedNetwork, LinkSpec, NetworkError
from qtrain.units import parse_latency, parse_rate


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def own_prefix(name: str) -> str:
    """A namespace prefix no other process uses (this pid in it): the tests look only at their own
    namespaces, never at one that another program, or an earlier crashed run, left behind."""
    return f"qtbtest{os.getpid()}-{name}"


@pytest.fixture
def root():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the network-emulation tests: run as root with iproute2 installed")
        pytest.skip("needs root, ip and tc")


def test_parsing():
    assert parse_rate("1gbit") == 1e9 and parse_rate("100mbit") == 1e8 and parse_rate("2.5Gbit") == 2.5e9
    assert parse_latency("0.1ms") == pytest.approx(1e-4) and parse_latency("50us") == pytest.approx(5e-5)
    assert parse_latency("0") == 0
    for bad in ("fast", "0gbit", "-1gbit", "1gb"):
        with pytest.raises(ValueError, match="bandwidth"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="latency"):
        parse_latency("soon")


def test_refuses_without_root_or_tools(monkeypatch):
    monkeypatch.setattr(netem.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(NetworkError, match="needs tc"):
        netem.check_privileges()
    monkeypatch.setattr(netem.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(netem.os, "geteuid", lambda: 1000)
    with pytest.raises(NetworkError, match="needs root"):
        EmulatedNetwork(2, LinkSpec(1e9)).up()


def test_the_link_check_takes_the_first_transfer_within_the_tolerance_of_three(monkeypatch):
    net = EmulatedNetwork(2, LinkSpec(200e6))
    rates = iter([150e6 / 8, 195e6 / 8, 100e6 / 8])  # bytes per second, as measure() returns them
    monkeypatch.setattr(net, "measure", lambda *a, **k: next(rates))
    assert net.check_link() == pytest.approx(195e6)  # a dip, then the rate
    rates = iter([150e6 / 8, 160e6 / 8, 170e6 / 8, 200e6 / 8])
    with pytest.raises(
        NetworkError, match="3 raw transfers measured 150, 160, 170 Mbit/s on a 200 Mbit/s link"
    ):
        net.check_link()


@pytest.mark.netns
@pytest.mark.parametrize("shared", [False, True], ids=["link-per-rank", "shared-link"])
def test_link_check_passes_on_the_shaped_rate_and_fails_on_another(root, shared):
    with EmulatedNetwork(3, LinkSpec(200e6, 0, shared)) as net:
        measured = net.check_link()
        assert abs(measured - 200e6) <= 0.10 * 200e6
        net.link = LinkSpec(1e9, 0, shared)  # claim a rate the qdiscs do not give
        with pytest.raises(NetworkError, match="link check failed"):
            net.check_link()
        mine = {n for n in namespaces() if n.startswith(net.prefix)}
        assert len(mine) == (1 if shared else 4)
    assert not any(n.startswith(net.prefix) for n in namespaces())


@pytest.mark.netns
def test_an_unshaped_link_has_no_qdisc_and_runs_faster_than_any_shaped_rate_used(root):
    with EmulatedNetwork(2, LinkSpec(None)) as net:
        assert "unshaped" in net.link.describe()
        qdiscs = subprocess.run(
            ["ip", "netns", "exec", net.namespace(0), "tc", "qdisc", "show", "dev", net.device(0)],
            capture_output=True,
            text=True,
        ).stdout
        assert "tbf" not in qdiscs
        assert net.check_link() > 2e9  # no rate to check against: measured only


@pytest.mark.netns
def test_teardown_after_a_failure_inside_the_block(root):
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedNetwork(2, LinkSpec(1e9), prefix=own_prefix("inside")) as net:
            assert net.created
            raise RuntimeError("boom")
    assert not any(n.startswith(own_prefix("inside")) for n in namespaces())


@pytest.mark.netns
def test_teardown_after_a_failure_half_way_through_building(root):
    calls = []

    def flaky(cmd, **kw):
        calls.append(cmd)
        if len(calls) == 9:  # after the switch and the first rank's namespace exist
            return subprocess.CompletedProcess(cmd, 2, "", "injected failure")
        return subprocess.run(cmd, **kw)

    net = EmulatedNetwork(3, LinkSpec(1e9), prefix=own_prefix("half"), run=flaky)
    with pytest.raises(NetworkError, match="injected failure"):
        net.up()
    assert any("netns" in c and "add" in c for c in calls[:9])
    assert not any(n.startswith(own_prefix("half")) for n in namespaces())


@pytest.mark.netns
def test_latency_without_netem_is_refused_or_applied(root):
    try:
        with EmulatedNetwork(2, LinkSpec(1e9, 1e-4), prefix=own_prefix("lat")) as net:
            assert net.check_link() > 0  # this kernel has netem
    except NetworkError as exc:
        assert "netem" in str(exc)
    assert not any(n.startswith(own_prefix("lat")) for n in namespaces())


@pytest.mark.netns
@pytest.mark.mpi
def test_mpi_over_tcp_across_namespaces_equals_the_simulator(root, mpiexec, tmp_path):
    sets = ["train.steps=15", "train.eval_every=15"]
    argv = [*QTRAIN, "train", "configs/efficient-adam.yaml", "--out", str(tmp_path / "mpi")]
    for s in sets:
        argv += ["--set", s]
    with EmulatedNetwork(3, LinkSpec(1e9), prefix=own_prefix("mpi")) as net:
        before = net.counters(0)
        p = subprocess.run(net.mpi_command(mpiexec, argv), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        after = net.counters(0)
    ref = simulate("configs/efficient-adam.yaml", 2, tmp_path / "sim", *sets)
    got = summary(tmp_path / "mpi")
    assert got["params_sha256"] == ref["params_sha256"]
    # the server's link really carried the uplinks (at least the packed messages)
    assert after["rx_bytes"] - before["rx_bytes"] >= got["bytes_up"]
