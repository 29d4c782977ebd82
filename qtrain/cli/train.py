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
) -> None:
    """Train CONFIG on MPI: rank 0 is the parameter server, ranks 1..K-1 are workers."""
    from qtrain.runtime.launch import run_train

    sys.exit(
        run_train(
            config, overrides, out, echo=typer.echo, resume=resume, reset_worker_state=reset_worker_state
        )
    )
