"""An emulated cluster network on one machine (Linux, root), for ``qtrain bench network``.

Per-rank links (default): every rank gets a network namespace ``PREFIX-rI`` with one veth
interface ``vI`` (address 10.77.0.I+1/24); its peer ``sI`` sits in a switch namespace
``PREFIX-sw`` on the bridge ``br0``. ``tc`` shapes both directions of every link: ``vI``'s egress
(rank -> switch) and ``sI``'s egress (switch -> rank), each with a token bucket (``tbf``) at the
configured rate, behind a ``netem`` delay of half the configured latency, so a message between two
ranks sees the rate on each of its two links and the configured one-way latency in all.

Shared link (``shared=True``): every rank runs in one namespace ``PREFIX-r0`` whose loopback is
shaped the same way, so all traffic shares one link (what a single congested switch port does).

Nothing outside the namespaces this object creates is ever touched: the switch, the bridge and
every veth end live inside them, and deleting the namespaces (``down``, run on exit, on failure
and on Ctrl-C) removes everything. ``PREFIX`` carries the process id, so concurrent runs never
collide and ``down`` only removes its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

SUBNET = "10.77.0"


class NetworkError(RuntimeError):
    """A one-line reason the emulated network cannot be built or does not behave."""


def check_privileges() -> None:
    """Refuse, in one line, where namespaces cannot be made: not root, or no ``ip``/``tc``."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetworkError(
            f"qtrain bench network needs {' and '.join(missing)} (Debian: apt-get install iproute2)"
        )
    if os.geteuid() != 0:
        raise NetworkError("qtrain bench network needs root: it creates network namespaces and tc qdiscs")


@dataclass(frozen=True)
class LinkSpec:
    rate_bps: float | None  # bits per second, each direction of each link (None: unshaped)
    latency_s: float = 0.0  # one-way, rank to rank
    shared: bool = False  # one shaped loopback for all ranks instead of a link per rank

    def describe(self) -> str:
        kind = "one shared link" if self.shared else "a link per rank"
        rate = "unshaped" if self.rate_bps is None else f"{self.rate_bps / 1e9:g} Gbit/s"
        return f"{rate}, {self.latency_s * 1e3:g} ms, {kind}"


class EmulatedNetwork:
    """``with EmulatedNetwork(ranks, LinkSpec(1e9, 1e-4)) as net: net.wrap(i, argv)`` runs
    ``argv`` as rank ``i``, inside its namespace."""

    def __init__(self, ranks: int, link: LinkSpec, prefix: str | None = None, run=subprocess.run):
        if ranks < 1:
            raise NetworkError(f"an emulated network needs at least one rank, got {ranks}")
        self.ranks, self.link = ranks, link
        self.prefix = prefix or f"qtb{os.getpid()}"
        self._run = run
        self.created: list[str] = []

    # ------------------------------------------------------------------ names
    def namespace(self, rank: int) -> str:
        return f"{self.prefix}-r{0 if self.link.shared else rank}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def address(self, rank: int) -> str:
        return "127.0.0.1" if self.link.shared else f"{SUBNET}.{rank + 1}"

    def device(self, rank: int) -> str:
        return "lo" if self.link.shared else f"v{rank}"

    def wrap(self, rank: int, argv: list[str], env: dict | None = None) -> list[str]:
        """``argv`` run inside rank ``rank``'s namespace, with extra environment ``env``."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["ip", "netns", "exec", self.namespace(rank), "env", *extra, *argv]

    def mpi_command(self, launcher: list[str], argv: list[str], rank_env: dict | None = None) -> list[str]:
        """An MPMD ``mpiexec`` command that runs ``argv`` once per rank, rank ``i`` inside its
        namespace, with MPICH told to use TCP sockets only: ``UCX_TLS=tcp,self`` (the PyPI
        wheel's UCX netmod would otherwise reach the other ranks through shared memory, which
        namespaces do not separate), ``UCX_NET_DEVICES`` = the rank's link, and
        ``MPIR_CVAR_NOLOCAL=1`` (no shared-memory path between ranks on one host). ``rank_env``
        maps a rank to more environment for it alone."""
        cmd = list(launcher)
        for r in range(self.ranks):
            env = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": self.device(r), "MPIR_CVAR_NOLOCAL": "1"}
            env.update((rank_env or {}).get(r, {}))
            cmd += [*([":"] if r else []), "-n", "1", *self.wrap(r, argv, env)]
        return cmd

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> EmulatedNetwork:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
        p = self._run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise NetworkError(f"`{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip()}")

    def _add_namespace(self, name: str) -> None:
        self._ip("ip", "netns", "add", name)
        self.created.append(name)
        self._ip("ip", "link", "set", "lo", "up", ns=name)

    def up(self) -> None:
        """Create the namespaces, links and shaping; on any failure remove what was made."""
        check_privileges()
        try:
            if self.link.shared:
                self._add_namespace(self.namespace(0))
                self._shape(self.namespace(0), "lo", self.link.latency_s)
                return
            self._add_namespace(self.switch)
            self._ip("ip", "link", "add", "br0", "type", "bridge", ns=self.switch)
            self._ip("ip", "link", "set", "br0", "up", ns=self.switch)
            for r in range(self.ranks):
                ns, v, s = self.namespace(r), self.device(r), f"s{r}"
                self._add_namespace(ns)
                self._ip(
                    "ip",
                    "link",
                    "add",
                    v,
                    "netns",
                    ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    s,
                    "netns",
                    self.switch,
                )
                self._ip("ip", "addr", "add", f"{self.address(r)}/24", "dev", v, ns=ns)
                self._ip("ip", "link", "set", v, "up", ns=ns)
                self._ip("ip", "link", "set", s, "master", "br0", ns=self.switch)
                self._ip("ip", "link", "set", s, "up", ns=self.switch)
                self._shape(ns, v, self.link.latency_s / 2)
                self._shape(self.switch, s, self.link.latency_s / 2)
        except BaseException:
            self.down()
            raise

    def _shape(self, ns: str, dev: str, delay_s: float) -> None:
        """Token bucket at the link rate, behind a netem delay when ``delay_s`` > 0. The bucket
        holds 10 ms of traffic, and at least two of the device's largest packets (a packet larger
        than the bucket could never leave: loopback's MTU is 64 KiB). tc-tbf(8) asks for at least
        rate / HZ, the tokens of one timer tick (4 ms at this kernel's HZ = 250, 10 ms at HZ = 100):
        1 ms held the rate only while the host scheduled the qdisc promptly, and 200 Mbit/s links
        measured 142-178 Mbit/s when it did not. An unshaped link gets no
        bucket: the veth pair runs as fast as the CPUs move the bytes."""
        tbf = []
        if self.link.rate_bps is not None:
            rate = f"{int(self.link.rate_bps)}bit"
            mtu = 65536 if dev == "lo" else 1500
            burst = f"{max(2 * mtu + 1024, int(self.link.rate_bps / 8 / 100))}b"
            tbf = ["tbf", "rate", rate, "burst", burst, "latency", "100ms"]
        if delay_s <= 0:
            if tbf:
                self._ip("tc", "qdisc", "add", "dev", dev, "root", *tbf, ns=ns)
            return
        delay = ["netem", "delay", f"{delay_s * 1e6:.0f}us"]
        try:
            self._ip("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *delay, ns=ns)
        except NetworkError as exc:
            raise NetworkError(
                "a latency needs tc's netem qdisc, which this kernel does not offer (no sch_netem): "
                "run with --latency 0 (the veth links alone add tens of microseconds)"
            ) from exc
        if tbf:
            self._ip("tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf, ns=ns)

    def down(self) -> None:
        """Delete every namespace this object created (their veths, bridge and qdiscs go with
        them). Safe to call twice; never raises."""
        for name in reversed(self.created):
            self._run(["ip", "netns", "del", name], capture_output=True, text=True)
        self.created = []

    def counters(self, rank: int) -> dict[str, int]:
        """The byte counters of rank ``rank``'s link as its namespace sees them: ``rx_bytes``
        (what reached the rank) and ``tx_bytes`` (what it sent), headers included."""
        out = {}
        for key in ("rx_bytes", "tx_bytes"):
            path = f"/sys/class/net/{self.device(rank)}/statistics/{key}"
            p = self._run(
                ["ip", "netns", "exec", self.namespace(rank), "cat", path], capture_output=True, text=True
            )
            if p.returncode != 0:
                raise NetworkError(f"cannot read {path} in {self.namespace(rank)}: {p.stderr.strip()}")
            out[key] = int(p.stdout)
        return out

    # ------------------------------------------------------------------ link check
    def measure(self, sender: int, receiver: int, nbytes: int = 32 << 20, port: int = 47017) -> float:
        """Bytes per second of one raw TCP transfer from ``sender`` to ``receiver``, timed by the
        receiver from its first byte to its last."""
        server = subprocess.Popen(
            self.wrap(
                receiver, [sys.executable, "-c", _RECEIVER, self.address(receiver), str(port), str(nbytes)]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            client = self._run(
                self.wrap(
                    sender, [sys.executable, "-c", _SENDER, self.address(receiver), str(port), str(nbytes)]
                ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            out, err = server.communicate(timeout=120)
        finally:
            if server.poll() is None:
                server.kill()
        if client.returncode != 0 or server.returncode != 0:
            raise NetworkError(f"raw transfer failed: {(client.stderr + err).strip().splitlines()[-1:]}")
        return float(out.strip())

    def check_link(self, tolerance: float = 0.10, attempts: int = 3) -> float:
        """A raw transfer between the first two ranks must reach the configured rate within
        ``tolerance`` (an unshaped link: only measured); returns the measured bits per second.
        Up to ``attempts`` transfers are made: one 32 MB transfer lasts a quarter of a second at
        1 Gbit/s, so a moment when another process holds the core can cost it 10% (seen on an
        otherwise idle 2-core host), while an emulation that cannot hold the rate fails them all."""
        seen, rate = [], self.link.rate_bps
        for _ in range(attempts):
            measured = 8 * self.measure(0, min(1, self.ranks - 1))
            if rate is None or abs(measured - rate) <= tolerance * rate:
                return measured
            seen.append(f"{measured / 1e6:.0f}")
        raise NetworkError(
            f"link check failed: {len(seen)} raw transfers measured {', '.join(seen)} Mbit/s on a "
            f"{rate / 1e6:.0f} Mbit/s link (more than {tolerance:.0%} off): the "
            "emulation does not hold on this machine, so no results are reported"
        )


# receiver: listen, accept, read nbytes, print bytes/s from first to last byte
_RECEIVER = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(1)
s.settimeout(60); c, _ = s.accept(); c.settimeout(60)
buf = bytearray(1 << 20); got = first = c.recv_into(buf); t0 = time.perf_counter()
while got < n:
    k = c.recv_into(buf)
    if not k: break
    got += k
dt = time.perf_counter() - t0
c.sendall(b"k"); print((got - first) / dt if dt > 0 else 0.0)
"""
# sender: connect (retrying while the receiver starts), send nbytes, wait for the receiver's ack
_SENDER = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(200):
    try:
        c = socket.create_connection((host, port), timeout=60); break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("receiver never listened")
block = b"q" * (1 << 20); sent = 0
while sent < n:
    c.sendall(block[: min(len(block), n - sent)]); sent += min(len(block), n - sent)
c.recv(1)
"""
