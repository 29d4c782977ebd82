"""``qtrain simulate``: N virtual workers and the server in one process, no MPI."""

from __future__ import annotations

import time

import typer


def simulate(
    config: str = typer.Argument(..., help="YAML config file (see configs/)."),
    workers: int = typer.Option(
        None, "--workers", "-w", help="Virtual workers (default: the config's `workers`)."
    ),
    servers: str = typer.Option(
        None,
        "--servers",
        help="Serving ranks, each owning a shard of the segments, or 'colocated' (every virtual worker "
        "also serves its shard); default: the config's runtime.servers.",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key: --set algorithm.lr=0.01 (repeatable)."
    ),
    out: str = typer.Option(None, "--out", help="Output directory (default runs/simulate-ALGORITHM-TIME)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print nothing but errors (the summary is in OUT/summary.json)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="OUT holds another run: remove its files first (they are named)."
    ),
) -> None:
    """Run CONFIG with N virtual workers through the same engine as `qtrain train`. Ctrl-C stops
    after the step under way (evaluation, checkpoint, summary); a second Ctrl-C ends at once."""
    from qtrain.cli.errors import fail
    from qtrain.cli.report import print_summary
    from qtrain.config import ConfigError, load_config
    from qtrain.engine.divergence import Diverged
    from qtrain.engine.simulator import simulate as run
    from qtrain.io.disk_errors import describe
    from qtrain.runtime.signals import StopRequest

    if servers is not None:
        overrides = [*overrides, f"runtime.servers={servers}"]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))
    n = workers if workers is not None else cfg.workers
    if n < 1:
        fail(f"--workers must be at least 1, got {n}")
    out = out or f"runs/simulate-{cfg.algorithm.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stop = StopRequest()  # Ctrl-C, SIGTERM, SIGUSR1: stop after the step, as an MPI run does;
    stop.install(None, grace_s=0.0)  # a second one ends the process at once
    watchdog = _deadline(cfg.runtime.timeout_s)
    try:
        summary = run(
            cfg,
            n,
            out,
            log=(lambda s: None) if quiet else typer.echo,
            overwrite=overwrite,
            phase=watchdog.enter,
            stop=lambda: stop.reason,
        )
    except (ValueError, Diverged) as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk, a read-only file system: one line naming the file
        fail(describe(exc))
    finally:
        watchdog.stop()
    if not quiet:
        print_summary(summary, out)


def _deadline(timeout_s: float):
    """The deadline MPI runs have: a phase (set-up, one worker's step, the server's, an evaluation,
    a checkpoint) that runs past ``runtime.timeout_s`` ends the simulator with a line naming it
    (a hung plug-in, data loader or file system once hung ``simulate`` forever)."""
    import os
    import sys

    from qtrain.runtime.watchdog import Watchdog

    def on_timeout(message: str) -> None:  # the watchdog printed the line naming the phase
        sys.stderr.flush()
        os._exit(1)

    watchdog = Watchdog(0, timeout_s, on_timeout, who="simulate")
    watchdog.enter("set-up: data and model")
    return watchdog.start()
