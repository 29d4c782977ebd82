"""``qtrain train``: the MPI run. Launch with ``mpiexec -n K`` (K >= 2), ``mpirun`` or ``srun``."""

from __future__ import annotations

import sys

import typer


def train(
    config: str = typer.Argument(..., help="YAML config file (see configs/)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key: --set algorithm.lr=0.01 (repeatable)."
    ),
    out: str = typer.Option(None, "--out", help="Output directory (default runs/train-ALGORITHM-TIME)."),
    resume: str = typer.Option(
        None, "--resume", help="Checkpoint file, or `auto`: the newest valid one in OUT."
    ),
    reset_worker_state: bool = typer.Option(
        False,
        "--reset-worker-state",
        help="Resume with a different number of workers: their state starts at zero.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="OUT holds another run: remove its config, summary, trace, checkpoints and rank logs first.",
    ),
) -> None:
    """Train CONFIG on MPI: rank 0 is the parameter server, ranks 1..K-1 are workers."""
    from qtrain.cli.report import print_summary
    from qtrain.library.session import session as current
    from qtrain.library.trainer import train as run

    summary = run(config, overrides, out, resume, reset_worker_state, overwrite)
    if summary is not None:
        print_summary(summary, str(current().out_dir))
    sys.exit(0)
