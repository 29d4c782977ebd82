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
        raise SystemExit(_invoke())
    finally:
        before_exit()


def _invoke() -> int:
    """Run the command and return its exit status. A usage error (an unknown option, a missing
    argument) depends on the command line alone, which every rank of a job shares: only the
    launcher's rank 0 (or a process no launcher started) prints it, and every rank exits 2, so a
    64-rank job says it once, not 64 times."""
    from qtrain.runtime.mpi_info import launch_rank

    # click's ClickException (newer typer vendors click, so it is reached through typer's own
    # errors): the oldest class in BadParameter's ancestry that defines show()
    click_error = [c for c in typer.BadParameter.__mro__ if "show" in vars(c)][-1]
    try:
        status = app(standalone_mode=False)  # the commands return None; typer.Exit(n) returns n
    except click_error as exc:
        if launch_rank() in (None, "0"):
            exc.show()
        return exc.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return 1
    return status if type(status) is int else 0
