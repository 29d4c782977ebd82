"""How the CLI reports bad input: one line naming the culprit, non-zero exit, no traceback."""

from __future__ import annotations

import sys

import typer


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"qtrain: error: {message}", err=True)
    sys.exit(code)
