"""How the CLI reports bad input: one line naming the culprit, non-zero exit, no traceback."""

from __future__ import annotations

import typer

from qtrain.io.abandoned_files import exit_process


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"qtrain: error: {message}", err=True)
    exit_process(code)
