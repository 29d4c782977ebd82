"""``qtrain bench network``: qtrain against fp32 and torch DDP's hooks on an emulated network."""

from __future__ import annotations

import signal
from pathlib import Path

import typer


def network(
    configs: list[str] = typer.Argument(
        None,
        help="qtrain config files to run (each under MPI over TCP); with --script, the script's "
        "arguments (after --), common to every run.",
    ),
    bandwidth: str = typer.Option(
        "1gbit",
        "--bandwidth",
        help="Rate of every link, each direction; 'unshaped': no limit (the compute-bound baseline).",
    ),
    latency: str = typer.Option("0", "--latency", help="One-way rank-to-rank latency (needs tc netem)."),
    workers: int = typer.Option(4, "--workers", help="Workers (qtrain adds its serving ranks)."),
    servers: str = typer.Option(
        "1",
        "--servers",
        help="qtrain's serving ranks (runtime.servers), each on its own shaped link; 'colocated': "
        "every worker also serves its shard (no serving rank apart).",
    ),
    steps: int = typer.Option(
        None, "--steps", help="Training steps of every run (config files; default 30)."
    ),
    warmup: int = typer.Option(5, "--warmup", help="Steps left out of the timings."),
    peers: str = typer.Option(
        None,
        "--peers",
        help="DDP peers: ddp, ddp-fp16, ddp-powersgd:RANK ('' for none); with --twin also "
        "ddp-powersgd:RANK:START (PowerSGD's first START iterations uncompressed; default 10). "
        "Default: ddp,ddp-fp16,ddp-powersgd:4 (with --script: none unless --twin is given).",
    ),
    target_accuracy: float = typer.Option(
        None, "--target-accuracy", help="Report the wall time to reach it."
    ),
    eval_every: int = typer.Option(
        None, "--eval-every", help="Evaluate every N steps (and at the end; config files; default 10)."
    ),
    shared_link: bool = typer.Option(False, "--shared-link", help="All ranks share one shaped link."),
    backend: str = typer.Option(
        "mpi",
        "--backend",
        help="What carries qtrain's messages (config files): mpi (an mpiexec job), torch "
        "(torch.distributed with gloo: one process per rank with a torchrun-like environment) or "
        "both (each config under MPI, then torch: the results give torch/MPI and whether the "
        "parameters agree).",
    ),
    overrides: list[str] = typer.Option([], "--set", help="Config override for every run (repeatable)."),
    out: str = typer.Option("runs/bench-network", "--out", help="Output directory (results.json, runs/)."),
    script: str = typer.Option(
        None,
        "--script",
        help="A library script to run instead of `qtrain train` (it must take --out DIR for "
        "qtrain.init); its arguments go after --.",
    ),
    runs: list[str] = typer.Option(
        [],
        "--run",
        help="With --script: one qtrain configuration, '[NAME=]EXTRA ARGS' added to the script's "
        "arguments (e.g. '1bit=--config c.yaml'); repeatable; none: the script as it is.",
    ),
    twin: str = typer.Option(
        None,
        "--twin",
        help="With --script: the script's DDP version, run under torchrun (gloo) as the peers.",
    ),
    target: float = typer.Option(
        None,
        "--target",
        help="With --script: the validation loss to reach (default: the plain DDP twin's final loss).",
    ),
    pattern: str = typer.Option(
        None,
        "--pattern",
        help="With --twin: a regular expression with groups (?P<step>..) and (?P<loss>..) matching the "
        "twin's evaluation lines (default: 'step N val_loss X' and nanoGPT's 'step N: ... val loss X').",
    ),
) -> None:
    """Run CONFIGS (or --script) and DDP peers on an emulated cluster network (root, Linux) and
    compare them: seconds per step, bytes, accuracy or time to a target validation loss."""
    if script is not None:
        if steps is not None or eval_every is not None:
            from qtrain.cli.errors import fail

            fail(
                "--steps and --eval-every go with config files; with --script the script's arguments set them"
            )
        if backend != "mpi":
            from qtrain.cli.errors import fail

            fail(f"--backend {backend} goes with config files; --script runs the script under MPI")
        return _script_mode(
            script,
            configs or [],
            runs,
            twin,
            peers,
            target,
            pattern,
            bandwidth,
            latency,
            workers,
            servers,
            warmup,
            shared_link,
            overrides,
            target_accuracy,
            out,
        )
    if not configs:
        from qtrain.cli.errors import fail

        fail("qtrain bench network: give config files, or --script SCRIPT -- ARGS")
    if runs or twin or target is not None or pattern:
        from qtrain.cli.errors import fail

        fail("--run, --twin, --target and --pattern go with --script")
    backends = {"mpi": ["mpi"], "torch": ["torch"], "both": ["mpi", "torch"]}.get(backend)
    if backends is None:
        from qtrain.cli.errors import fail

        fail(f"--backend {backend!r}: choose mpi, torch or both")
    peers = "ddp,ddp-fp16,ddp-powersgd:4" if peers is None else peers
    steps = 30 if steps is None else steps
    eval_every = 10 if eval_every is None else eval_every
    from qtrain.bench.netem import LinkSpec, NetworkError, check_privileges
    from qtrain.bench.network import BenchPlan, bench_network, peer_hook, run_name, table
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
            said = load_config(c, overrides).runtime.backend
            if said != "auto" and backends != [said]:
                raise ValueError(
                    f"{c}: runtime.backend is {said}, but --backend {backend} runs it over "
                    f"{' and '.join(backends)}: give --set runtime.backend=auto"
                )
        if "torch" in backends:
            from qtrain.runtime.backends.torch_dist import missing_library

            missing = missing_library()
            if missing is not None:
                raise ValueError(f"--backend {backend}: {missing}")
    except (NetworkError, ValueError, ConfigError) as exc:
        fail(str(exc))
    names = [run_name(c, b) for c in configs for b in backends]
    if len(set(names)) < len(names):
        fail(f"every qtrain run needs its own name, the config's file name (got {', '.join(names)})")
    count = _server_count(servers, fail)
    if workers < 1 or eval_every < 1 or steps < warmup + 2:
        fail(
            "--workers and --eval-every must be >= 1 and --steps >= --warmup + 2, "
            f"got {workers}, {eval_every}, {steps}"
        )
    if count == "colocated" and workers < 2:
        fail(f"--servers colocated needs at least 2 workers, got {workers}")
    if any(s.split("=", 1)[0].strip() == "runtime.servers" for s in overrides):
        fail("--set runtime.servers: use --servers, which also gives each serving rank its link")
    plan = BenchPlan(configs, link, workers, steps, warmup, peer_list, target_accuracy, overrides, eval_every)
    plan.servers = count
    plan.backends = backends
    _run(bench_network, plan, out, table, (NetworkError, RuntimeError))


def _script_mode(
    script,
    args,
    runs,
    twin,
    peers,
    target,
    pattern,
    bandwidth,
    latency,
    workers,
    servers,
    warmup,
    shared_link,
    overrides,
    target_accuracy,
    out,
) -> None:
    """``--script``: the user's library script and its DDP twin, as time to a target loss."""
    import os
    import re

    from qtrain.bench.netem import LinkSpec, NetworkError, check_privileges
    from qtrain.bench.script_bench import (
        DEFAULT_PATTERN,
        QtrainRun,
        ScriptPlan,
        bench_script,
        parse_run,
        peer_hook_name,
        script_table,
    )  # fmt: skip
    from qtrain.cli.errors import fail
    from qtrain.units import parse_latency, parse_rate

    if overrides or target_accuracy is not None:
        fail(
            "--set and --target-accuracy go with config files; "
            "with --script give settings in --run and --target"
        )
    peers = ("ddp,ddp-fp16,ddp-powersgd:4" if twin else "") if peers is None else peers
    try:
        for path, what in ((script, "--script"), (twin, "--twin")):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{what} {path!r}: no such file")
        rate = None if bandwidth.strip().lower() == "unshaped" else parse_rate(bandwidth)
        link = LinkSpec(rate, parse_latency(latency), shared_link)
        peer_list = [p.strip() for p in peers.split(",") if p.strip()]
        for p in peer_list:
            peer_hook_name(p)
        if peer_list and twin is None:
            raise ValueError("--peers need --twin SCRIPT: the script's DDP version")
        plan_runs = [parse_run(r) for r in runs] or [QtrainRun(None, [])]
        regex = pattern or DEFAULT_PATTERN
        groups = re.compile(regex).groupindex
        if not {"step", "loss"} <= set(groups):
            raise ValueError(f"--pattern {pattern!r}: needs the named groups (?P<step>...) and (?P<loss>...)")
    except re.error as exc:
        fail(f"--pattern {pattern!r}: {exc}")
    except (NetworkError, ValueError) as exc:
        fail(str(exc))
    names = [r.name for r in plan_runs if r.name] + peer_list
    if len(set(names)) < len(names):
        fail(f"--run/--peers: every run needs its own name (got {', '.join(names)})")
    if workers < 1 or warmup < 1:
        fail(f"--workers and --warmup must be >= 1, got {workers}, {warmup}")
    servers = _server_count(servers, fail)
    if servers == "colocated" and workers < 2:
        fail(f"--servers colocated needs at least 2 workers, got {workers}")
    try:  # after the arguments: their mistakes are named without root too
        check_privileges()
    except NetworkError as exc:
        fail(str(exc))
    plan = ScriptPlan(
        script, list(args), plan_runs, link, twin, peer_list, workers, servers, warmup, target, regex
    )
    _run(bench_script, plan, out, script_table, (NetworkError, RuntimeError, ValueError))


def _run(bench, plan, out: str, table, failures: tuple) -> None:
    """Run ``bench(plan, OUT, launcher)`` and print its ``table``: ``failures`` end in one line
    (exit 1), Ctrl-C and SIGTERM tear the network down (exit 130)."""
    from qtrain.cli.errors import fail
    from qtrain.runtime.mpi_info import launcher

    # tear the network down on Ctrl-C and SIGTERM, also where the shell started us with SIGINT
    # ignored (a background job of a non-interactive shell inherits SIG_IGN)
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        results = bench(plan, Path(out), launcher(), echo=typer.echo)
    except failures as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted: the emulated network was torn down, no results were written", 130)
    for line in table(results):
        typer.echo(line)
    typer.echo(f"results: {Path(out) / 'results.json'}, {Path(out) / 'results.png'}")


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def _server_count(servers: str, fail) -> int | str:
    """``--servers``: a count >= 1, or ``colocated``."""
    word = servers.strip().lower()
    if word == "colocated":
        return word
    if word.isdigit() and int(word) >= 1:
        return int(word)
    fail(f"--servers {servers!r}: a count of serving ranks >= 1 or colocated")
    raise AssertionError  # fail() exits
