"""``qtrain bench network``: qtrain configs and torch DDP peers on an emulated cluster network.

Every run uses the same EmulatedNetwork (one namespace and shaped link per rank, see
:mod:`qtrain.bench.netem`), the same model, data, batch and step count. qtrain runs are
``mpiexec`` jobs of K servers (``runtime.servers``, ranks 0..K-1, each on its own link) + W
workers over TCP; DDP peers are W gloo ranks (no server) with the first config's model, data and
learning rate and ``torch.optim.Adam``.

Backends (``BenchPlan.backends``): each config runs once per backend named, the same ``qtrain
train`` command over MPI (``mpiexec``) and over ``torch.distributed`` with gloo (one process per
rank in its namespace, started the way the DDP peers are, with a torchrun-like environment:
``QTRAIN_BACKEND=torch``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` = rank 0's
address, ``MASTER_PORT``). A run records its ``backend`` and ``params_sha256``; with both, the
results' ``backend_comparison`` gives each config's torch/MPI step-time ratio and whether the two
ended with the same parameters.

Per run: seconds per step (the lead serving rank's step ends, median after ``warmup`` steps, with
min and max), bytes per step each way as the serving ranks' links counted them, summed over them
and on the busiest one (qtrain: received = uplinks, sent = downlinks, headers included; with
co-located shards every rank's link, whose received and sent bytes each mix its uplinks and
downlinks; DDP: rank 0's link, whose traffic is symmetric in a ring), qtrain's time per phase
(from its trace; server phases are the busiest serving rank's per step), the final test accuracy,
and the wall time to reach ``target_accuracy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qtrain.bench.host import describe_host, host_line
from qtrain.bench.netem import EmulatedNetwork, LinkSpec
from qtrain.engine.topology import Topology
from qtrain.io import strict_json

QTRAIN = [sys.executable, "-m", "qtrain"]
MASTER_PORT = 29517
BACKENDS = ("mpi", "torch")
# the line of the start-up plan that each backend prints (runtime/startup.py): the run's own word
# for the backend it used
PLAN_LINE = {"mpi": "  CUDA-aware MPI: ", "torch": "  backend: torch "}


@dataclass
class BenchPlan:
    configs: list[str]
    link: LinkSpec
    workers: int = 4
    steps: int = 30
    warmup: int = 5
    peers: list[str] = field(default_factory=lambda: ["ddp", "ddp-fp16", "ddp-powersgd:4"])
    target_accuracy: float | None = None
    overrides: list[str] = field(default_factory=list)
    eval_every: int = 10
    timeout_s: float = 900.0
    # qtrain's serving ranks (runtime.servers), each on its own link; or "colocated": the workers
    # serve (no rank of its own)
    servers: int | str = 1
    backends: list[str] = field(default_factory=lambda: ["mpi"])  # each config runs under each

    @property
    def ranks(self) -> int:
        """The emulated network's ranks: qtrain's servers and workers (DDP uses the first W)."""
        return self.workers if self.servers == "colocated" else int(self.servers) + self.workers

    @property
    def serving(self) -> tuple[int, ...]:
        """qtrain's serving ranks: each counts the bytes on its own link."""
        if self.servers == "colocated":
            return Topology.colocated_ranks(self.workers).servers
        return Topology.parameter_server(self.ranks, servers=int(self.servers)).servers


def peer_hook(name: str) -> str:
    """``ddp`` -> none, ``ddp-fp16`` -> fp16, ``ddp-powersgd:4`` -> powersgd:4."""
    if name == "ddp":
        return "none"
    if name == "ddp-fp16":
        return "fp16"
    if name.startswith("ddp-powersgd:") and name.split(":")[1].isdigit() and int(name.split(":")[1]) > 0:
        return "powersgd:" + name.split(":")[1]
    raise ValueError(f"--peers: unknown peer {name!r}; choose ddp, ddp-fp16 or ddp-powersgd:RANK")


def step_stats(step_end_s: list[float], warmup: int) -> dict:
    """Median, min and max seconds per step from the wall times at which steps ended, leaving out
    the first ``warmup`` steps."""
    ends = np.asarray(step_end_s, dtype=np.float64)
    if len(ends) < warmup + 2:
        raise ValueError(f"{len(ends)} steps leave too few after {warmup} warm-up steps")
    per = np.diff(ends[warmup:])
    return {"median_s": float(np.median(per)), "min_s": float(per.min()), "max_s": float(per.max())}


def time_to_accuracy(evals: list[dict], target: float | None) -> float | None:
    """Wall seconds of the first evaluation reaching ``target`` (None: never, or no target)."""
    if target is None:
        return None
    hits = [e["wall_s"] for e in evals if e.get("test_accuracy", -1.0) >= target]
    return min(hits) if hits else None


def run_name(config: str, backend: str) -> str:
    """A qtrain run's name: the config's stem, with ``-torch`` for the torch backend."""
    return Path(config).stem + ("-torch" if backend == "torch" else "")


def run_qtrain(
    net: EmulatedNetwork, plan: BenchPlan, config: str, out: Path, mpiexec: list[str], backend: str = "mpi"
) -> dict:
    """``qtrain train CONFIG`` on the network over ``backend``: one ``mpiexec`` job (mpi), or one
    process per rank with a torchrun-like environment (torch); the same arguments either way."""
    from qtrain.io.trace import read_trace

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose {' or '.join(BACKENDS)}")
    name = run_name(config, backend)
    run_dir = out / "runs" / name
    sets = [
        f"train.steps={plan.steps}",
        f"train.eval_every={plan.eval_every}",
        "train.progress=lines",
        "trace.timeline_every=1",
        f"runtime.servers={plan.servers}",
        *plan.overrides,
    ]
    argv = [*QTRAIN, "train", config, "--out", str(run_dir), "--overwrite"]  # this benchmark's own runs
    argv += [a for s in sets for a in ("--set", s)]
    serving = plan.serving
    output = run_dir / "bench-output.txt"
    if backend == "mpi":
        # every serving rank counts the bytes on its own link
        rank_env = {r: {"QTRAIN_BACKEND": "mpi"} for r in range(plan.ranks)}
        for r in serving:
            rank_env[r]["QTRAIN_WIRE_DEVICE"] = net.device(r)
        cmd = net.mpi_command(mpiexec, argv, rank_env)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=plan.timeout_s)
        text, failed = p.stdout + p.stderr, f"rc {p.returncode}" if p.returncode else ""
    else:
        codes, text = run_torch_ranks(net, plan, argv, serving, out / "runs" / f"{name}.rank")
        killed = "; -9: stopped after another rank failed" if -9 in codes else ""
        failed = f"exit codes {codes}{killed}" if any(codes) else ""
    run_dir.mkdir(parents=True, exist_ok=True)  # a rank that failed early may have made none
    output.write_text(text)
    if failed:
        raise RuntimeError(f"qtrain run {name} failed ({failed}); see {output}")
    if not any(line.startswith(PLAN_LINE[backend]) for line in text.splitlines()):
        raise RuntimeError(
            f"qtrain run {name} did not say it ran over {backend} (no {PLAN_LINE[backend].strip()!r} line "
            f"in its plan); see {output}"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["steps"] < plan.steps:  # an agreed stop (a signal reached the ranks): no comparison
        raise RuntimeError(
            f"qtrain run {name} stopped after {summary['steps']} of {plan.steps} steps; see {output}"
        )
    steps, evals, _ = read_trace(run_dir / "trace.h5")
    served = steps[steps["role"] == 0]  # the serving rows (co-located ranks also have worker rows)
    by_rank = {r: np.sort(served[served["rank"] == r], order="step")[plan.warmup :] for r in serving}
    server = np.sort(served[served["rank"] == serving[0]], order="step")  # the lead's row ends the step
    workers = steps[steps["role"] == 1]
    wall = {int(s): float(w) for s, w in zip(server["step"], server["wall_s"], strict=True)}

    def summed(column: str) -> float:  # per step, over the serving ranks
        return float(sum(rows[column].astype(np.float64).mean() for rows in by_rank.values()))

    def busiest(column: str) -> float:  # per step, the serving rank with the most of it
        return float(np.max([rows[column] for rows in by_rank.values()], axis=0).mean())

    from qtrain.analysis.trace_report import SERVER_PHASES, WORKER_PHASES

    # phases: the busiest serving rank's, per step (with one server, that server's), without its
    # evaluations (compute_s); the workers' mean
    phases = {f"server_{k}": busiest(k) for k in SERVER_PHASES if k != "compute_s"}
    wlate = workers[workers["step"] > plan.warmup]
    phases.update({f"worker_{k}": float(wlate[k].mean()) for k in WORKER_PHASES})
    ev = [
        {"step": int(e["step"]), "wall_s": wall[int(e["step"])], "test_accuracy": float(e["test_accuracy"])}
        for e in evals
    ]
    return {
        "name": name,
        "kind": "qtrain",
        "config": config,
        "backend": backend,
        "algorithm": summary["algorithm"],
        "uplink": summary["uplink"]["codec"],
        "downlink": summary["downlink"]["codec"],
        "numel": summary["numel"],
        "servers": "colocated" if plan.servers == "colocated" else len(serving),
        "seconds_per_step": step_stats(list(server["wall_s"]), plan.warmup),
        "wire_bytes_per_step": {"up": summed("wire_recv_bytes"), "down": summed("wire_sent_bytes")},
        "wire_bytes_busiest_link": {"up": busiest("wire_recv_bytes"), "down": busiest("wire_sent_bytes")},
        "packed_bytes_per_step": {"up": summed("bytes_recv"), "down": summed("bytes_sent")},
        "phases_s": phases,
        "final_test_accuracy": summary.get("final_test_accuracy"),
        "evals": ev,
        "time_to_target_s": time_to_accuracy(ev, plan.target_accuracy),
        "params_sha256": summary["params_sha256"],
    }


def run_torch_ranks(
    net: EmulatedNetwork, plan: BenchPlan, argv: list[str], serving, log_prefix: Path
) -> tuple[list[int], str]:
    """``argv`` as every rank of a torch.distributed (gloo) job, rank r in its namespace with what
    torchrun would set (rank 0's address as the master; ``LOCAL_RANK`` = r: one host, as under
    mpiexec) and gloo bound to the rank's link. When one rank fails the others are stopped, as
    torchrun's agent does. Returns the exit codes and the ranks' output, rank by rank."""

    def env_of(r: int) -> dict:
        env = {
            "QTRAIN_BACKEND": "torch",
            "RANK": r,
            "WORLD_SIZE": plan.ranks,
            "LOCAL_RANK": r,
            "MASTER_ADDR": net.address(0),
            "MASTER_PORT": MASTER_PORT,
            "GLOO_SOCKET_IFNAME": net.device(r),
        }
        return env | ({"QTRAIN_WIRE_DEVICE": net.device(r)} if r in serving else {})

    argvs = [argv for _ in range(plan.ranks)]
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        codes = run_per_rank(net, argvs, env_of, log_prefix, plan.timeout_s, fail_fast=True)
    finally:  # the ranks' logs become the run's one output file (its directory is wiped by --overwrite)
        text = ""
        for r in range(plan.ranks):
            log = Path(f"{log_prefix}-{r}.txt")
            if log.exists():
                body = log.read_text(errors="replace")
                text += body if r == 0 else "".join(f"[rank {r}] {line}\n" for line in body.splitlines())
                log.unlink()
    return codes, text


def backend_comparison(runs: list[dict]) -> list[dict]:
    """Per config run under both backends: the median step times, torch/MPI, and whether the two
    runs ended with the same parameters (``params_sha256``)."""
    by = {(r.get("config"), r.get("backend")): r for r in runs if r["kind"] == "qtrain"}
    rows = []
    for (config, backend), m in by.items():
        t = by.get((config, "torch"))
        if backend != "mpi" or t is None:
            continue
        ms, ts = m["seconds_per_step"]["median_s"], t["seconds_per_step"]["median_s"]
        rows.append(
            {
                "config": config,
                "mpi": m["name"],
                "torch": t["name"],
                "mpi_median_s": ms,
                "torch_median_s": ts,
                "torch_over_mpi": ts / ms,
                "params_equal": m["params_sha256"] == t["params_sha256"],
            }
        )
    return rows


def run_peer(net: EmulatedNetwork, plan: BenchPlan, peer: str, out: Path) -> dict:
    hook = peer_hook(peer)
    run_dir = out / "runs" / peer.replace(":", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file = run_dir / "peer.json"
    result_file.unlink(missing_ok=True)  # a file from an earlier run must not pass for this one's
    master = f"{net.address(0)}:{MASTER_PORT}"
    argvs = []
    for r in range(plan.workers):
        argv = [
            sys.executable,
            "-m",
            "qtrain.bench.ddp_peer",
            plan.configs[0],
            "--rank",
            str(r),
            "--world",
            str(plan.workers),
            "--master",
            master,
            "--hook",
            hook,
            "--steps",
            str(plan.steps),
            "--eval-every",
            str(plan.eval_every),
            "--out",
            str(result_file),
            "--wire-device",
            net.device(r),
            "--warmup",
            str(plan.warmup),
        ] + [a for s in plan.overrides for a in ("--set", s)]
        argvs.append(argv)
    gloo = lambda r: {"GLOO_SOCKET_IFNAME": net.device(r)}  # noqa: E731
    codes = run_per_rank(net, argvs, gloo, run_dir / "rank", plan.timeout_s)
    if any(codes) and not result_file.exists():
        raise RuntimeError(f"DDP peer {peer} failed (exit codes {codes}); see {run_dir}/rank-*.txt")
    for r, code in enumerate(codes):
        if code:  # after the final barrier: every step was timed; gloo can abort while closing
            print(
                f"qtrain bench network: warning: DDP peer {peer} rank {r} exited {code} after the "
                f"results were written (see {run_dir}/rank-{r}.txt); its timings are complete",
                file=sys.stderr,
            )
    res = json.loads(result_file.read_text())
    wire = res["wire_bytes"]
    measured = max(plan.steps - plan.warmup, 1)
    return {
        "name": peer,
        "kind": "ddp",
        "hook": hook,
        "seconds_per_step": step_stats(res["step_end_s"], plan.warmup),
        "wire_bytes_per_step": {"up": wire["tx"] / measured, "down": wire["rx"] / measured},
        "phases_s": {},
        "final_test_accuracy": res["evals"][-1].get("test_accuracy") if res["evals"] else None,
        "evals": res["evals"],
        "time_to_target_s": time_to_accuracy(res["evals"], plan.target_accuracy),
    }


def run_per_rank(
    net: EmulatedNetwork, argvs: list[list[str]], env_of, log_prefix: Path, timeout: float, fail_fast=False
):
    """Run ``argvs[r]`` as rank r inside its namespace, with the environment ``env_of(r)`` and its
    output in ``LOG_PREFIX-r.txt``; wait for all (past ``timeout`` seconds in all,
    subprocess.TimeoutExpired is raised), kill what still runs, return the exit codes.
    ``fail_fast``: once one rank exits nonzero the others get 10 s, then are killed (exit code
    -9); a rank the others wait for never comes back, and no launcher stops them here."""
    import time

    procs = []
    try:
        for r, argv in enumerate(argvs):
            log = open(f"{log_prefix}-{r}.txt", "w")  # noqa: SIM115 - closed with the process
            cmd = net.wrap(r, argv, env_of(r))
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + timeout
        grace: float | None = None
        while any(p.poll() is None for p, _ in procs):
            now = time.monotonic()
            if now > deadline:
                raise subprocess.TimeoutExpired(procs[0][0].args, timeout)
            if fail_fast and grace is None and any(p.poll() for p, _ in procs):
                grace = now + 10.0
            if grace is not None and now > grace:
                break
            time.sleep(0.05)
        return [p.returncode if p.poll() is not None else -9 for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()


def results_head(link: LinkSpec, workers: int, servers: int | str, warmup: int, **more) -> dict:
    """What every results.json starts with: the link, the host, the job's shape and ``more``."""
    return {
        "link": {"rate_bps": link.rate_bps, "latency_s": link.latency_s, "shared": link.shared},
        "cores": os.cpu_count(),
        "host": describe_host(),
        "workers": workers,
        "servers": servers,
        "warmup": warmup,
        **more,
        "runs": [],
    }


def check_link(net: EmulatedNetwork, results: dict, echo) -> None:
    """Measure the link (raises when it misses its rate), record and say what it delivered."""
    measured = net.check_link()
    results["link"]["measured_bps"] = measured
    echo(f"link check: {measured / 1e6:.0f} Mbit/s measured on {net.link.describe()}")


def bench_network(plan: BenchPlan, out: Path, mpiexec: list[str], echo=print) -> dict:
    """Build the network, check the link, run every config and peer, tear the network down;
    write ``OUT/results.json`` and ``OUT/results.png`` and return the results."""
    out.mkdir(parents=True, exist_ok=True)
    results = results_head(
        plan.link,
        plan.workers,
        plan.servers,
        plan.warmup,
        steps=plan.steps,
        target_accuracy=plan.target_accuracy,
        backends=list(plan.backends),
    )
    with EmulatedNetwork(plan.ranks, plan.link) as net:
        check_link(net, results, echo)
        rate = plan.link.rate_bps
        try:
            for config in plan.configs:
                for backend in plan.backends:
                    echo(f"running qtrain {config} over {backend} ...")
                    run = run_qtrain(net, plan, config, out, mpiexec, backend)
                    results["runs"].append(with_link_time(run, rate))
            for peer in plan.peers:
                echo(f"running {peer} ...")
                results["runs"].append(with_link_time(run_peer(net, plan, peer, out), rate))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"a run did not finish within {exc.timeout:g} s: {' '.join(exc.cmd[-8:])}"
            ) from exc
    if len(plan.backends) > 1:
        results["backend_comparison"] = backend_comparison(results["runs"])
    (out / "results.json").write_text(strict_json.dumps(results, indent=2) + "\n")
    from qtrain.analysis.plots import plot_bench_network

    plot_bench_network(results, str(out / "results.png"))
    return results


def with_link_time(run: dict, rate_bps: float | None) -> dict:
    """Add ``link_s``: the seconds the step's bytes need on the busiest serving rank's link at the
    shaped rate, the busier direction (each direction is shaped on its own); the communication
    bound of a step. None on unshaped links."""
    w = run.get("wire_bytes_busiest_link", run["wire_bytes_per_step"])
    run["link_s"] = None if rate_bps is None else 8 * max(w["up"], w["down"]) / rate_bps
    return run


def _servers(servers: int | str) -> str:
    return "qtrain's shards co-located" if servers == "colocated" else f"{servers} qtrain server(s)"


def table(results: dict) -> list[str]:
    """The terminal table: one line per run."""
    link = results["link"]
    rate = "unshaped links" if link["rate_bps"] is None else f"{link['rate_bps'] / 1e9:g} Gbit/s"
    lines = [
        f"{rate} ({link.get('measured_bps', 0) / 1e6:.0f} Mbit/s measured), "
        f"{results['workers']} workers, {_servers(results.get('servers', 1))}, "
        f"{results['cores']} cores, {results['steps']} steps (median after {results['warmup']})",
        *([host_line(results["host"])] if "host" in results else []),
        f"{'run':<22}{'s/step':>8}{'min':>8}{'max':>8}{'up MB':>9}{'down MB':>9}{'link s':>8}"
        f"{'accuracy':>10}{'to target s':>12}",
    ]
    if any(r.get("servers") == "colocated" for r in results["runs"]):
        lines.append(
            "  (co-located runs: up MB = bytes every rank's link received, down MB = bytes it sent; each "
            "link carries its rank's uplinks and downlinks both)"
        )
    for r in results["runs"]:
        s, w = r["seconds_per_step"], r["wire_bytes_per_step"]
        acc, tt, link_s = r["final_test_accuracy"], r["time_to_target_s"], r.get("link_s")
        lines.append(
            f"{r['name']:<22}{s['median_s']:>8.3f}{s['min_s']:>8.3f}{s['max_s']:>8.3f}{w['up'] / 1e6:>9.2f}"
            f"{w['down'] / 1e6:>9.2f}{(f'{link_s:.3f}' if link_s is not None else '-'):>8}"
            f"{(f'{acc:.4f}' if acc is not None else '-'):>10}"
            f"{(f'{tt:.1f}' if tt is not None else '-'):>12}"
        )
    if results.get("backend_comparison"):
        lines.append("torch.distributed (gloo) against MPI, the same config and steps:")
        for c in results["backend_comparison"]:
            same = "equal" if c["params_equal"] else "DIFFERENT"
            lines.append(
                f"  {Path(c['config']).stem}: s/step median {c['mpi_median_s']:.3f} (mpi), "
                f"{c['torch_median_s']:.3f} (torch): torch/MPI {c['torch_over_mpi']:.2f}x; "
                f"params_sha256 {same}"
            )
    return lines
