"""``qtrain slurm render``: a ready sbatch script for a given job shape."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from qtrain.engine.topology import SERVING_RANKS
from qtrain.shipped import SLURM_TEMPLATE as TEMPLATE

app = typer.Typer(help="Slurm helpers.", no_args_is_help=True)
TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")


def render_script(
    config: str,
    nodes: int,
    workers: int,
    gpus_per_worker: int,
    time: str,
    partition: str | None,
    home: Path,
    template: str,
    qtrain_bin: Path | None = None,
) -> str:
    """The template's body under #SBATCH lines for this shape; CONFIG becomes the default argument.
    ``home``: where the job runs (its ``runs/``); ``qtrain_bin``: the ``qtrain`` it runs (default:
    the template's own, ``$QTRAIN_HOME/.venv/bin/qtrain``)."""
    tasks = workers + SERVING_RANKS
    per_node = -(-tasks // nodes)  # tasks are packed in rank order: the server first, then workers
    header = [
        "#!/usr/bin/env bash",
        f"# Rendered by `qtrain slurm render {config} --nodes {nodes} --workers {workers}`: "
        f"{SERVING_RANKS} server + "
        f"{workers} workers on {nodes} node(s). Submit with: sbatch THIS_FILE [--set key=value ...]",
        "#SBATCH --job-name=qtrain",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks={tasks}",
        f"#SBATCH --ntasks-per-node={per_node}",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --time={time}",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=slurm-%x-%j.out",
    ]
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    if gpus_per_worker:
        # workers on a node share its GPUs by node-local rank; the server needs none
        header.append(f"#SBATCH --gres=gpu:{gpus_per_worker * min(workers, per_node)}")
    body = [line for line in template.splitlines()[1:] if not line.startswith("#SBATCH")]
    preset = [f"export QTRAIN_HOME=${{QTRAIN_HOME:-{shlex.quote(str(home))}}}"]
    if qtrain_bin is not None:
        preset.append(f"export QTRAIN=${{QTRAIN:-{shlex.quote(str(qtrain_bin))}}}")
    preset += [
        f'set -- {shlex.quote(config)} "$@"',
    ]
    return "\n".join(header + preset + body) + "\n"


@app.command("render")
def render(
    config: str = typer.Argument(..., help="The config file the job trains."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes."),
    workers: int = typer.Option(..., "--workers", help="Worker tasks (the job has workers + 1 tasks)."),
    gpus_per_worker: int = typer.Option(0, "--gpus-per-worker", help="GPUs per worker (0: CPU workers)."),
    time: str = typer.Option("01:00:00", "--time", help="Time limit, [D-]HH:MM:SS."),
    partition: str = typer.Option(None, "--partition", help="Partition."),
) -> None:
    """Print an sbatch script for this shape (save it and submit it with sbatch)."""
    from qtrain.cli.errors import fail

    if workers < 1 or nodes < 1 or gpus_per_worker < 0:
        fail("--workers and --nodes must be at least 1, --gpus-per-worker at least 0")
    if nodes > workers + SERVING_RANKS:
        fail(f"{nodes} nodes for {workers + SERVING_RANKS} tasks: some nodes would be empty")
    if not TIME.match(time):
        fail(f"--time {time!r} must look like HH:MM:SS or D-HH:MM:SS")
    from qtrain.shipped import resolve_config

    path = resolve_config(config)
    if not path.is_file():
        fail(f"config file {config!r} does not exist")
    if not TEMPLATE.is_file():
        fail(f"the batch template {TEMPLATE} is missing from this installation of qtrain")
    cfg = str(path.resolve())
    script = render_script(
        cfg,
        nodes,
        workers,
        gpus_per_worker,
        time,
        partition,
        Path.cwd(),
        TEMPLATE.read_text(),
        _this_qtrain(),
    )
    typer.echo(script, nl=False)


def _this_qtrain() -> Path:
    """The ``qtrain`` of this installation (beside its python), which the job runs."""
    import sys

    return Path(sys.executable).parent / "qtrain"
