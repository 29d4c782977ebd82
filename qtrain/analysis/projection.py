"""What-if projection of a run's step time to another network and worker count, from its trace.

The model of one step of qtrain's parameter server (no overlap: each part waits for the one before):

    T(B, N, L) = C + E_w                          worker: forward/backward, worker rule + encode
               + N * b_up / B + L                 server ingress: N uplinks share the server's link
               + N * d + E_s                      server: decode-accumulate each uplink, rule + encode
               + h(N) * (b_down / B + L)          downlink broadcast tree, h(N) = ceil(log2(N + 1))
               + D_w                              worker: decode + apply the downlink

B is the bandwidth of the server's link (each direction), N the number of workers, L the one-way
latency per message hop. h(N) is the depth of a binomial broadcast tree (MPICH's Ibcast for
these sizes): the server sends h(N) copies one after another, and the last copy reaches its
subtree after the same number of hops. C, E_w, D_w are the workers' measured means, d the server's
measured decode time per uplink (its decode time divided by the measured worker count), E_s the
server's measured rule + encode time. b_up and b_down are bytes per message on the wire: the
trace's own interface counters when it has them (``qtrain bench network``), else the packed
messages plus the control records and TCP/IP framing (1514 bytes on the wire per 1448 of payload).

With K serving ranks (``runtime.servers``), each owning 1/K of the vector on a link of its own
(``qtrain bench network --servers K``), the server's parts divide by K and so do the links' loads,
but a worker still sends and receives a whole model's messages on its own link:

    T_K = C + E_w + max(N / K, 1) * b_up / B + L + N * d / K + E_s / K
              + max(h(N) / K, 1) * b_down / B + h(N) * L + D_w

(K = 1 is the model above). A trace taken with K servers has a row per serving rank and step:
d, E_s and the bytes are summed over them, so the model holds one server's whole-vector numbers.
The bytes are averaged over the steps that neither evaluate nor follow an evaluation: with K > 1
an evaluation also gathers the master copy over the serving ranks' links (the other owners count
it in the next step's rows), traffic that is not the step's (the measured step time, a median,
leaves those steps out too). Validated against emulated K = 1, 2 and 4 runs in docs/benchmarks.md.

Co-located (``servers=colocated``, ``runtime.servers: colocated``): every one of the N ranks
works and owns 1/N of the vector, and its one link carries the other owners' shares of its uplink
out and the other workers' uplinks of its shard in, (N-1)/N of a whole uplink each way, and the
same of the downlink (the owners' broadcast trees relay evenly over the ranks); its own share
never travels. The rank also runs its owner's part, the decode of N uplinks of 1/N of the vector
(one whole uplink's) and 1/N of the rule:

    T_co = C + E_w + (N-1)/N * b_up / B + L + d + E_s / N
                   + (N-1)/N * b_down / B + h(N-1) * L + D_w

A co-located trace's link counters mix each rank's working and serving traffic, so its bytes are
the packed messages (every owner counts every worker's uplink of its shard, its own included).

The timings come from the machine the trace was taken on: a projection answers "this code, this
compute, another network", as the ECQ-SGD paper's performance model does (Wu et al., ICML 2018,
Sec. 5). All times are means over the steps after ``warmup``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

FRAMING = 1514 / 1448  # Ethernet + IP + TCP bytes per payload byte at a 1500-byte MTU
UPLINK_RECORD_BYTES, DOWNLINK_RECORD_BYTES = 264, 24  # engine.records (a test keeps them equal)


def tree_depth(workers: int) -> int:
    """Copies the root of a binomial broadcast tree sends, = hops to the farthest of N workers."""
    return math.ceil(math.log2(workers + 1))


@dataclass(frozen=True)
class PerfModel:
    compute_s: float  # C
    worker_encode_s: float  # E_w
    worker_decode_s: float  # D_w
    server_decode_per_uplink_s: float  # d
    server_encode_s: float  # E_s
    up_bytes: float  # b_up, one worker's uplink of one step on the wire
    down_bytes: float  # b_down, one downlink message of one step on the wire
    workers: int  # N of the measured run
    measured_step_s: float  # median step time of the measured run
    bytes_source: str  # "interface counters" or "packed messages + framing"
    servers: int = 1  # K of the measured run (its N when co-located)
    colocated: bool = False  # the measured run's ranks worked and served

    @classmethod
    def from_trace(cls, steps: np.ndarray, attrs: dict, warmup: int = 5, evals=None) -> PerfModel:
        """The model of a trace's ``steps`` rows after ``warmup`` (means); ``evals``, the trace's
        evaluation rows, leave their steps and the next ones out of the bytes (unless that leaves
        none)."""
        server = _per_step(steps[steps["role"] == 0])
        workers = steps[steps["role"] == 1]
        if len(server) < warmup + 2:
            raise ValueError(
                f"the trace has {len(server)} steps: too few for a projection after {warmup} warm-up"
            )
        first = int(server["step"][warmup])
        s = server[server["step"] >= first]
        w = workers[workers["step"] >= first]
        n = int(attrs["workers"])
        segments = int(attrs.get("segments", 1))
        b = s
        if evals is not None and len(evals):
            near = np.concatenate([evals["step"], evals["step"] + 1])
            plain = s[~np.isin(s["step"], near)]
            b = plain if len(plain) else s
        colocated = bool(attrs.get("colocated", 0))
        if b["wire_recv_bytes"].any() and not colocated:
            up = float(b["wire_recv_bytes"].mean()) / n
            down = float(b["wire_sent_bytes"].mean()) / tree_depth(n)
            source = "interface counters"
        else:
            up = (float(b["bytes_recv"].mean()) / n + segments * UPLINK_RECORD_BYTES) * FRAMING
            down = (float(b["bytes_sent"].mean()) / n + segments * DOWNLINK_RECORD_BYTES) * FRAMING
            source = "packed messages + framing"
        wall = s["wall_s"]
        measured = float(np.median(np.diff(wall))) if wall.any() else float("nan")
        return cls(
            compute_s=float(w["compute_s"].mean()),
            worker_encode_s=float(w["encode_s"].mean()),
            worker_decode_s=float(np.nanmean(w["decode_s"])),
            server_decode_per_uplink_s=float(s["decode_s"].mean()) / n,
            server_encode_s=float(s["encode_s"].mean()),
            up_bytes=up,
            down_bytes=down,
            workers=n,
            measured_step_s=measured,
            bytes_source=source,
            servers=len(attrs.get("server_ranks", [0])),
            colocated=colocated,
        )

    def predict(
        self,
        bandwidth_bps: float,
        workers: int | None = None,
        latency_s: float = 0.0,
        servers: int | str | None = None,
    ) -> dict:
        """The step time and its parts at ``bandwidth_bps`` (bits/s), ``workers``, ``latency_s``
        and ``servers`` serving ranks, each on its own link, or ``"colocated"`` (default: the
        measured run's layout)."""
        n = workers or self.workers
        if servers is None:
            servers = "colocated" if self.colocated else self.servers
        bytes_per_s = bandwidth_bps / 8
        if servers == "colocated":
            share = (n - 1) / n  # of a whole message, each way on every rank's link
            parts = {
                "worker_compute_s": self.compute_s,
                "worker_encode_s": self.worker_encode_s,
                "uplink_s": share * self.up_bytes / bytes_per_s + latency_s,
                "server_decode_s": self.server_decode_per_uplink_s,
                "server_encode_s": self.server_encode_s / n,
                "downlink_s": share * self.down_bytes / bytes_per_s + tree_depth(n - 1) * latency_s,
                "worker_decode_s": self.worker_decode_s,
            }
            return {
                "bandwidth_bps": bandwidth_bps,
                "workers": n,
                "servers": "colocated",
                "latency_s": latency_s,
                "step_s": sum(parts.values()),
                "parts": parts,
            }
        k = int(servers)
        depth = tree_depth(n)
        parts = {
            "worker_compute_s": self.compute_s,
            "worker_encode_s": self.worker_encode_s,
            "uplink_s": max(n / k, 1) * self.up_bytes / bytes_per_s + latency_s,
            "server_decode_s": n * self.server_decode_per_uplink_s / k,
            "server_encode_s": self.server_encode_s / k,
            "downlink_s": max(depth / k, 1) * self.down_bytes / bytes_per_s + depth * latency_s,
            "worker_decode_s": self.worker_decode_s,
        }
        return {
            "bandwidth_bps": bandwidth_bps,
            "workers": n,
            "servers": k,
            "latency_s": latency_s,
            "step_s": sum(parts.values()),
            "parts": parts,
        }


def parse_project(text: str) -> dict:
    """``bandwidth=10gbit,workers=64,latency=0.1ms`` -> keyword arguments of ``PerfModel.predict``."""
    from qtrain.units import parse_latency, parse_rate

    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--project {text!r}: expected key=value items, got {item!r}")
        if key == "bandwidth":
            out["bandwidth_bps"] = parse_rate(value)
        elif key == "workers" and re.fullmatch(r"[1-9][0-9]*", value):
            out["workers"] = int(value)
        elif key == "servers" and re.fullmatch(r"[1-9][0-9]*", value):
            out["servers"] = int(value)
        elif key == "servers" and value == "colocated":
            out["servers"] = "colocated"
        elif key == "latency":
            out["latency_s"] = parse_latency(value)
        else:
            raise ValueError(
                f"--project: unknown or bad item {item!r} (bandwidth=RATE, workers=N, servers=K or "
                "colocated, latency=TIME)"
            )
    if "bandwidth_bps" not in out:
        raise ValueError(f"--project {text!r}: bandwidth= is required (e.g. bandwidth=10gbit)")
    return out


def format_projection(projection: dict) -> str:
    m, p = projection["model"], projection["predicted"]
    lines = [
        f"projection (measured: {m['workers']} workers, {m['measured_step_s']:.4f} s/step; bytes from "
        f"{m['bytes_source']}: {m['up_bytes'] / 1e6:.3f} MB up per worker, {m['down_bytes'] / 1e6:.3f} MB "
        "per downlink copy)",
        f"  at {p['bandwidth_bps'] / 1e9:g} Gbit/s, {p['workers']} workers, {_layout(p['servers'])}, "
        f"{p['latency_s'] * 1e6:g} us: "
        f"{p['step_s']:.4f} s/step",
    ]
    lines += [f"    {k:<18}{v:.4f} s" for k, v in p["parts"].items()]
    return "\n".join(lines)


def _layout(servers: int | str) -> str:
    return "co-located shards" if servers == "colocated" else f"{servers} server(s)"


def _per_step(rows: np.ndarray) -> np.ndarray:
    """One server row per step: with several serving ranks, their times and bytes summed (each
    served its shard), the wall clock the lead's (the lowest rank's)."""
    rows = np.sort(rows, order=["step", "rank"])
    _, first = np.unique(rows["step"], return_index=True)
    out = rows[first].copy()
    if len(first) == len(rows):
        return out
    for column in ("decode_s", "encode_s", "bytes_recv", "bytes_sent", "wire_recv_bytes", "wire_sent_bytes"):
        out[column] = np.add.reduceat(rows[column], first)
    return out
