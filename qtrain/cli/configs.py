"""``qtrain config list`` and ``qtrain config show NAME``: the configs that ship with qtrain (a
wheel carries them, ``qtrain/shipped/``). Every command that takes a config takes one of these
names as well as a path."""

from __future__ import annotations

import typer

app = typer.Typer(help="The configs that ship with qtrain.", no_args_is_help=True)


@app.command("list")
def list_configs() -> None:
    """Print each shipped config's name and what it trains."""
    from qtrain.shipped import CONFIGS, config_names, describe

    names = config_names()
    width = max(len(n) for n in names)
    for name in names:
        typer.echo(f"{name:<{width}}  {describe(CONFIGS / f'{name}.yaml')}")


@app.command("show")
def show(name: str = typer.Argument(..., help="A shipped config's name (qtrain config list).")) -> None:
    """Print a shipped config's YAML (save it and edit it: qtrain config show sgd > my.yaml)."""
    from qtrain.cli.errors import fail
    from qtrain.shipped import config_names, shipped_config

    path = shipped_config(name)
    if path is None:
        fail(f"no shipped config {name!r} (shipped: {', '.join(config_names())})")
    typer.echo(path.read_text(encoding="utf-8"), nl=False)
