"""The ``qtrain`` command: one typer app, subcommands registered from their own modules."""

from __future__ import annotations

import typer

from qtrain.cli import analyze, bench, checkpoint, configs, info, reproduce, run, simulate, slurm, train

app = typer.Typer(
    name="qtrain",
    help="Communication-efficient distributed training on MPI: quantized parameter server, error feedback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags look like flags (rich showed `--json <bool>`)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from qtrain import __version__

        typer.echo(f"qtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print qtrain's version and exit."
    ),
) -> None:
    """Communication-efficient distributed training on MPI: quantized parameter server, error feedback."""


app.command("info")(info.info)
app.command("train")(train.train)
app.command("run")(run.run)
app.command("simulate")(simulate.simulate)
app.command("analyze")(analyze.analyze)
app.command("compare")(analyze.compare)
app.command("reproduce")(reproduce.reproduce)
app.add_typer(configs.app, name="config")
app.add_typer(checkpoint.app, name="checkpoint")
app.add_typer(slurm.app, name="slurm")
app.add_typer(bench.app, name="bench")


def main() -> None:
    from qtrain.cli.teardown import before_exit

    try:
        app()  # typer ends with SystemExit, also on success
    finally:
        before_exit()
