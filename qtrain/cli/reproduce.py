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
) -> None:
    """Run paper reproductions in the simulator; write results.json, table.md and PNG plots."""
    from qtrain.cli.errors import fail
    from qtrain.config import ConfigError
    from qtrain.reproduce.registry import REPRODUCTIONS

    chosen = list(REPRODUCTIONS) if names == ["all"] else names
    unknown = [n for n in chosen if n not in REPRODUCTIONS]
    if unknown:
        fail(f"unknown reproduction {unknown[0]!r}; choose from: all, {', '.join(REPRODUCTIONS)}")
    for name in chosen:
        t0 = time.perf_counter()
        target = Path(out) / name
        try:
            REPRODUCTIONS[name](target, quick=quick)
        except (ConfigError, ValueError) as exc:  # e.g. Fashion-MNIST not installed
            fail(f"reproduce {name}: {exc}")
        typer.echo(f"{name}: {time.perf_counter() - t0:.0f} s -> {target}/table.md")
        typer.echo((target / "table.md").read_text())
