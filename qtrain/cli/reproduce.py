"""``qtrain reproduce NAME``: regenerate a paper's headline result (docs/reproductions.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def reproduce(
    names: list[str] = typer.Argument(..., help="Reproductions to run, or 'all'."),
    out: str = typer.Option(
        "runs/reproduce", "--out", help="Output directory (one folder per reproduction)."
    ),
    quick: bool = typer.Option(False, "--quick", help="A few steps on small data: checks the pipeline only."),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        help="Reproductions run side by side in this many processes (each single-threaded, so the "
        "results are the same); the ones that measure time run alone afterwards.",
    ),
) -> None:
    """Run paper reproductions in the simulator; write results.json, table.md and PNG plots."""
    from qtrain.cli.errors import fail
    from qtrain.reproduce.registry import MEASURES_TIME, MINUTES, REPRODUCTIONS

    chosen = list(REPRODUCTIONS) if names == ["all"] else names
    unknown = [n for n in chosen if n not in REPRODUCTIONS]
    if unknown:
        fail(f"unknown reproduction {unknown[0]!r}; choose from: all, {', '.join(REPRODUCTIONS)}")
    if jobs < 1:
        fail(f"--jobs must be at least 1, got {jobs}")
    t_all = time.perf_counter()
    alone = [n for n in chosen if jobs == 1 or n in MEASURES_TIME]
    side_by_side = sorted((n for n in chosen if n not in alone), key=lambda n: -MINUTES.get(n, 0))
    if side_by_side:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(side_by_side)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_one, n, out, quick) for n in side_by_side]
            for f in concurrent.futures.as_completed(futures):
                _report(*f.result(), out, fail)
    for name in alone:
        _report(*_run_one(name, out, quick), out, fail)
    if len(chosen) > 1:
        typer.echo(f"all {len(chosen)} reproductions: {time.perf_counter() - t_all:.0f} s")


def _run_one(name: str, out: str, quick: bool) -> tuple[str, float, str | None]:
    """Run one reproduction: (name, seconds, error or None). In a child process under --jobs."""
    from qtrain.config import ConfigError
    from qtrain.reproduce.registry import REPRODUCTIONS

    t0 = time.perf_counter()
    try:
        REPRODUCTIONS[name](Path(out) / name, quick=quick)
    except (ConfigError, ValueError) as exc:  # e.g. Fashion-MNIST not installed
        return name, time.perf_counter() - t0, str(exc)
    return name, time.perf_counter() - t0, None


def _report(name: str, seconds: float, error: str | None, out: str, fail) -> None:
    if error is not None:
        fail(f"reproduce {name}: {error}")
    target = Path(out) / name
    typer.echo(f"{name}: {seconds:.0f} s -> {target}/table.md")
    typer.echo((target / "table.md").read_text())
