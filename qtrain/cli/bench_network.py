"""``qtrain bench network``: qtrain against fp32 and torch DDP's hooks on an emulated network."""

from __future__ import annotations

import signal
from pathlib import Path

import typer


def network(
    configs: list[str] = typer.Argument(..., help="qtrain config files to run (each under MPI over TCP)."),
    bandwidth: str = typer.Option(
        "1gbit",
        "--bandwidth",
        help="Rate of every link, each direction; 'unshaped': no limit (the compute-bound baseline).",
    ),
    latency: str = typer.Option("0", "--latency", help="One-way rank-to-rank latency (needs tc netem)."),
    workers: int = typer.Option(4, "--workers", help="Workers (qtrain adds its serving ranks)."),
    servers: int = typer.Option(
        1, "--servers", help="qtrain's serving ranks (runtime.servers), each on its own shaped link."
    ),
    steps: int = typer.Option(30, "--steps", help="Training steps of every run."),
    warmup: int = typer.Option(5, "--warmup", help="Steps left out of the timings."),
    peers: str = typer.Option(
        "ddp,ddp-fp16,ddp-powersgd:4",
        "--peers",
        help="DDP peers: ddp, ddp-fp16, ddp-powersgd:RANK ('' for none).",
    ),
    target_accuracy: float = typer.Option(
        None, "--target-accuracy", help="Report the wall time to reach it."
    ),
    eval_every: int = typer.Option(10, "--eval-every", help="Evaluate every N steps (and at the end)."),
    shared_link: bool = typer.Option(False, "--shared-link", help="All ranks share one shaped link."),
    overrides: list[str] = typer.Option([], "--set", help="Config override for every run (repeatable)."),
    out: str = typer.Option("runs/bench-network", "--out", help="Output directory (results.json, runs/)."),
) -> None:
    """Run CONFIGS and DDP peers on an emulated cluster network (root, Linux) and compare them."""
    from qtrain.bench.netem import LinkSpec, NetworkError, check_privileges
    from qtrain.bench.network import BenchPlan, bench_network, peer_hook, table
    from qtrain.cli.errors import fail
    from qtrain.config import ConfigError, load_config
    from qtrain.units import parse_latency, parse_rate

    try:
        check_privileges()
        rate = None if bandwidth.strip().lower() == "unshaped" else parse_rate(bandwidth)
        link = LinkSpec(rate, parse_latency(latency), shared_link)
        peer_list = [p.strip() for p in peers.split(",") if p.strip()]
        for p in peer_list:
            peer_hook(p)
        for c in configs:
            load_config(c, overrides)
    except (NetworkError, ValueError, ConfigError) as exc:
        fail(str(exc))
    if workers < 1 or servers < 1 or eval_every < 1 or steps < warmup + 2:
        fail(
            "--workers, --servers and --eval-every must be >= 1 and --steps >= --warmup + 2, "
            f"got {workers}, {servers}, {eval_every}, {steps}"
        )
    if any(s.split("=", 1)[0].strip() == "runtime.servers" for s in overrides):
        fail("--set runtime.servers: use --servers, which also gives each serving rank its link")
    plan = BenchPlan(configs, link, workers, steps, warmup, peer_list, target_accuracy, overrides, eval_every)
    plan.servers = servers
    from qtrain.runtime.mpi_info import launcher

    # tear the network down on Ctrl-C and SIGTERM, also where the shell started us with SIGINT
    # ignored (a background job of a non-interactive shell inherits SIG_IGN)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        results = bench_network(plan, Path(out), launcher(), echo=typer.echo)
    except (NetworkError, RuntimeError) as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted: the emulated network was torn down, no results were written", 130)
    for line in table(results):
        typer.echo(line)
    typer.echo(f"results: {Path(out) / 'results.json'}, {Path(out) / 'results.png'}")


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt
