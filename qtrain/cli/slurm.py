"""``qtrain slurm render``: a ready sbatch script for a given job shape.

Placement (a documented choice, not a heterogeneous job): the tasks are packed in rank order, as
Slurm's block distribution places them (each node ``tasks // nodes`` tasks, the first ``tasks %
nodes`` nodes one more), so the serving rank (task 0) shares node 0 with the first workers. It
takes no GPU: ``--gres=gpu:G`` counts workers only, G = the most workers any node holds (each
worker uses one GPU, ``cuda:(node-local rank % G)``), so on node 0 one of the requested GPUs
stays free when the node is full of workers elsewhere. ``--gpus-per-node`` checks that a shape
fits the cluster's nodes and says how many nodes it needs when it does not.

With ``--servers K`` (``runtime.servers``, ranks 0..K-1 serve) the tasks are dealt round-robin
over the nodes instead (``--distribution=cyclic``: task r on node r mod nodes), so the serving
ranks sit one per node beside that node's workers (BytePS's co-location: each server's link is
its node's, shared with the workers there); K above the node count puts two on a node, and the
script says so. The script passes ``--set runtime.servers=K`` to qtrain. The ``mpirun`` launcher
of the template maps ranks itself and ignores the distribution.

With ``--server-nodes S`` the serving ranks run on nodes of their own instead: the first S nodes
of the allocation hold only serving ranks (rank r on node r mod S), the other nodes hold the
workers in contiguous, balanced blocks. Every serving rank then has a link that no worker
shares. The script exports each task's node index (``QTRAIN_TASK_NODES``, rank order), and the
template turns it into a host file for ``srun --distribution=arbitrary`` (``SLURM_HOSTFILE``); it
refuses the ``mpirun`` launcher, which would place the ranks its own way. A job's nodes all get
the same ``--gres``, so with GPU workers the serving nodes' GPUs stay idle (the script says so):
a heterogeneous job would avoid that, which this does not render.

Backend (``--backend``): ``mpi`` (the default) leaves the launcher to the template
(``QTRAIN_LAUNCHER``, ``srun --mpi=pmi2`` unless set at submission). ``torch`` renders a job of the
torch backend (``torch.distributed`` with gloo): the script sets ``QTRAIN_LAUNCHER=srun-torch``,
the template's one launcher for it (``srun`` without MPI, exporting ``QTRAIN_BACKEND=torch``,
``MASTER_ADDR`` and ``MASTER_PORT`` to every task), and passes ``--set runtime.backend=torch``
so that the config agrees (to ``qtrain train``, or to ``qtrain run`` with ``-c``/``--set``; a
script that configures itself must leave ``runtime.backend`` at ``auto`` or ``torch``). Placement
is the same: srun lays out the tasks either way, and rank 0 (the rendezvous) is on node 0.

With ``--servers colocated`` (``runtime.servers: colocated``) every task is a worker that also
serves its shard: one task per worker (per GPU), no serving task, packed in rank order; the script
passes ``--set runtime.servers=colocated``."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import typer

from qtrain.cli.job_script_text import comment_text, sbatch_value, shell_word
from qtrain.shipped import SLURM_TEMPLATE as TEMPLATE

app = typer.Typer(help="Slurm helpers.", no_args_is_help=True)
TIME = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
MEM = re.compile(r"^\d+[KMGT]?$")
BACKENDS = ("mpi", "torch")


@dataclass
class JobShape:
    """What ``slurm render`` was asked for."""

    nodes: int
    workers: int
    gpus: bool = False  # one GPU per worker
    time: str = "01:00:00"
    sbatch: dict[str, str | None] = field(default_factory=dict)  # partition, account, ...: value
    setup: str | None = None  # shell lines the batch script runs before qtrain (module load, ...)
    servers: int = 1  # serving ranks (runtime.servers): tasks 0..servers-1
    server_nodes: int = 0  # > 0: the serving ranks on this many nodes of their own (the first ones)
    backend: str = "mpi"  # runtime.backend of the job: mpi (the template's launcher) or torch (srun-torch)
    colocated: bool = False  # every worker also serves its shard: no serving task (servers is 1, unused)

    def __post_init__(self) -> None:
        """A shape that leaves a node empty (or has none of something) is refused: ValueError
        with the reason, which ``render`` prints as the one-line error."""
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: it must be mpi or torch")
        if self.workers < 1 or self.nodes < 1 or self.servers < 1:
            raise ValueError("--workers, --servers and --nodes must be at least 1")
        if self.colocated and (self.server_nodes or self.servers != 1):
            raise ValueError("--servers colocated puts no serving rank apart: it takes no --server-nodes")
        if self.colocated and self.workers < 2:
            raise ValueError(f"--servers colocated needs at least 2 workers, got {self.workers}")
        s = self.server_nodes
        if s < 0:
            raise ValueError("--server-nodes must be 0 (serving ranks beside the workers) or more")
        if s and s >= self.nodes:
            raise ValueError(f"--server-nodes {s} of --nodes {self.nodes} leaves no node for the workers")
        if s > self.servers:
            raise ValueError(
                f"--server-nodes {s} for --servers {self.servers}: some serving nodes would be empty"
            )
        if s and self.workers < self.nodes - s:
            raise ValueError(
                f"{self.workers} workers on {self.nodes - s} worker nodes: some nodes would be empty"
            )
        if self.nodes > self.tasks:
            raise ValueError(f"{self.nodes} nodes for {self.tasks} tasks: some nodes would be empty")

    @property
    def serving_tasks(self) -> int:
        """The tasks that only serve (ranks 0..): none when co-located."""
        return 0 if self.colocated else self.servers

    @property
    def tasks(self) -> int:
        return self.workers + self.serving_tasks

    @property
    def per_node(self) -> int:
        """The most tasks any node holds (``--ntasks-per-node``)."""
        return max(Counter(self.task_nodes()).values())

    @property
    def placement(self) -> str:
        """packed (one server: tasks in rank order), cyclic (several, one per node beside the
        workers) or dedicated (the serving ranks on nodes of their own)."""
        if self.server_nodes:
            return "dedicated"
        return "cyclic" if self.servers > 1 and not self.colocated else "packed"

    def task_nodes(self) -> list[int]:
        """The node index of every task, in rank order (tasks 0..servers-1 serve)."""
        if self.placement == "dedicated":
            s = self.server_nodes
            return [r % s for r in range(self.servers)] + _blocks(self.workers, self.nodes - s, first=s)
        if self.placement == "cyclic":
            return [t % self.nodes for t in range(self.tasks)]
        return _blocks(self.tasks, self.nodes)

    def servers_per_node(self) -> list[int]:
        return self._count(self.task_nodes()[: self.serving_tasks])

    def workers_per_node(self) -> list[int]:
        """Workers on each node, in node order."""
        return self._count(self.task_nodes()[self.serving_tasks :])

    def _count(self, nodes: list[int]) -> list[int]:
        held = Counter(nodes)
        return [held[n] for n in range(self.nodes)]


def _blocks(count: int, nodes: int, first: int = 0) -> list[int]:
    """The node of each of ``count`` tasks in contiguous blocks over ``nodes`` nodes numbered from
    ``first``, as Slurm's block distribution counts them: ``count // nodes`` each, and one more on
    each of the first ``count % nodes``."""
    sizes = [count // nodes + (n < count % nodes) for n in range(nodes)]
    return [first + n for n, size in enumerate(sizes) for _ in range(size)]


@dataclass
class ScriptJob:
    """A library script the job runs with ``qtrain run`` instead of ``qtrain train CONFIG``."""

    path: str  # absolute
    args: list[str]  # the script's arguments
    run_options: list[str] | None = None  # qtrain run's -c/--set (None: the script configures itself)


def render_script(
    shape: JobShape,
    config: str | None,
    home: Path,
    template: str,
    qtrain_bin: Path | None = None,
    script: ScriptJob | None = None,
) -> str:
    """The template's body under #SBATCH lines for ``shape``; CONFIG becomes the default argument
    (or, with ``script``, the script and its arguments). ``home``: where the job runs (its
    ``runs/``); ``qtrain_bin``: the ``qtrain`` it runs (default: the template's own,
    ``$QTRAIN_HOME/.venv/bin/qtrain``). Every value goes in through ``job_script_text`` for its
    place (a shell word, an #SBATCH value, a comment): a value no #SBATCH line can hold is a
    ValueError naming its option."""
    options = f"--nodes {shape.nodes} --workers {shape.workers}"
    options += " --servers colocated" if shape.colocated else ""
    options += f" --servers {shape.servers}" if shape.servers > 1 else ""
    options += f" --server-nodes {shape.server_nodes}" if shape.server_nodes else ""
    options += f" --backend {shape.backend}" if shape.backend != "mpi" else ""
    if script is None:
        command, submit = f"{shell_word(config)} {options}", "sbatch THIS_FILE [--set key=value ...]"
    else:  # the options before --script ... -- ARGS, as they were typed
        words = [*options.split(), *(script.run_options or []), "--script", script.path]
        command = " ".join(map(shell_word, words))
        command += " -- " + " ".join(map(shell_word, script.args)) if script.args else ""
        submit = "sbatch THIS_FILE [MORE SCRIPT ARGUMENTS ...]"
    ranks = (
        f"{shape.workers} workers, each also serving 1/{shape.workers} (co-located, no serving task),"
        if shape.colocated
        else f"{shape.servers} server{'s' if shape.servers > 1 else ''} + {shape.workers} workers"
    )
    header = [
        "#!/usr/bin/env bash",
        f"# Rendered by `qtrain slurm render {comment_text(command)}`: {ranks} on "
        f"{shape.nodes} node(s). Submit with: " + submit,
        "#SBATCH --job-name=qtrain",
        f"#SBATCH --nodes={shape.nodes}",
        f"#SBATCH --ntasks={shape.tasks}",
        f"#SBATCH --ntasks-per-node={shape.per_node}",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --time={sbatch_value('time', shape.time)}",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=slurm-%x-%j.out",
    ]
    if shape.placement == "cyclic":
        header.append("#SBATCH --distribution=cyclic")
        per_node = shape.servers_per_node()
        where = (
            "one per node"
            if max(per_node) == 1
            else f"{max(per_node)} on a node: fewer nodes ({shape.nodes}) than serving ranks"
        )
        header.append(
            f"# Serving ranks 0..{shape.servers - 1}, {where}, beside the workers (cyclic distribution: "
            f"task r on node r mod {shape.nodes}); serving ranks per node {per_node}"
        )
    if shape.placement == "dedicated":
        s = shape.server_nodes
        header.append(
            f"# Serving ranks 0..{shape.servers - 1} on nodes of their own: the first {s} of the allocation "
            f"(serving ranks per node {shape.servers_per_node()[:s]}); the workers on the other "
            f"{shape.nodes - s} (QTRAIN_TASK_NODES: srun --distribution=arbitrary)"
        )
    for option, value in shape.sbatch.items():
        header.append(f"#SBATCH --{option}" + ("" if value is None else f"={sbatch_value(option, value)}"))
    if shape.gpus:
        per_node = shape.workers_per_node()
        idle = (
            "; the serving nodes' GPUs stay idle (every node of a job gets the same --gres)"
            if shape.placement == "dedicated"
            else ""
        )
        serving = "each worker also serves its shard" if shape.colocated else "the serving ranks take none"
        header.append(f"# GPUs: one per worker; workers per node {per_node}; {serving}{idle}")
        header.append(f"#SBATCH --gres=gpu:{max(per_node)}")
    body = [line for line in template.splitlines()[1:] if not line.startswith("#SBATCH")]
    preset = [f"export QTRAIN_HOME=${{QTRAIN_HOME:-{shell_word(str(home))}}}"]
    if qtrain_bin is not None:
        preset.append(f"export QTRAIN=${{QTRAIN:-{shell_word(str(qtrain_bin))}}}")
    if shape.setup:
        preset += ["# --setup: run before qtrain, in the batch shell (srun's tasks inherit it)", shape.setup]
    if shape.placement == "dedicated":
        nodes = " ".join(map(str, shape.task_nodes()))
        preset.append(f"export QTRAIN_TASK_NODES='{nodes}'  # each task's node in the allocation, rank order")
    if shape.backend == "torch":
        preset.append(
            "export QTRAIN_LAUNCHER=srun-torch  # --backend torch: srun exports QTRAIN_BACKEND=torch, "
            "MASTER_ADDR, MASTER_PORT"
        )
    sets = " --set runtime.backend=torch" if shape.backend == "torch" else ""
    sets += f" --set runtime.servers={shape.servers}" if shape.servers > 1 else ""
    sets += " --set runtime.servers=colocated" if shape.colocated else ""
    if script is None:
        preset.append(f'set -- {shell_word(config)}{sets} "$@"')
    else:
        preset.append(f"export QTRAIN_SCRIPT={shell_word(script.path)}")
        if script.run_options is not None:
            options = [*script.run_options, *sets.split()]
            preset.append("export QTRAIN_SCRIPT_OPTIONS=qtrain  # --out and --resume go to qtrain run")
            preset.append(f"export QTRAIN_RUN_OPTIONS={shell_word(' '.join(options))}")
        else:
            preset.append(
                "export QTRAIN_SCRIPT_OPTIONS=script  # the script takes --out and --resume (for qtrain.init)"
            )
            if shape.backend == "torch":
                preset.append("# the script's config must leave runtime.backend at auto (or set torch)")
            if shape.servers > 1 or shape.colocated:
                value = "colocated" if shape.colocated else shape.servers
                preset.append(f"# the script's config must set runtime.servers={value}")
        args = " ".join(map(shell_word, script.args))
        preset.append(f'set -- {args} "$@"'.replace("set --  ", "set -- "))
    return "\n".join(header + preset + body) + "\n"


@app.command("render")
def render(
    targets: list[str] = typer.Argument(
        None,
        help="The config the job trains (a path, or a shipped config's name); with --script, the "
        "script's arguments after --.",
        metavar="CONFIG | -- SCRIPT_ARGS",
    ),
    script: str = typer.Option(
        None,
        "--script",
        help="A library script to run with `qtrain run` instead of `qtrain train CONFIG`; it takes "
        "--out DIR and --resume auto for qtrain.init (as examples/gpt/train.py), unless -c/--set "
        "are given (then qtrain run takes them and the script calls qtrain.session()).",
    ),
    config_option: str = typer.Option(
        None, "--config", "-c", help="With --script: qtrain run's config (the script calls qtrain.session())."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="With --script: qtrain run's overrides (repeatable)."
    ),
    nodes: int = typer.Option(1, "--nodes", help="Nodes."),
    workers: int = typer.Option(..., "--workers", help="Worker tasks (the job has workers + servers tasks)."),
    servers: str = typer.Option(
        "1",
        "--servers",
        help="Serving ranks (runtime.servers): K > 1 places them one per node, cyclic, beside the "
        "workers (see --server-nodes); 'colocated': every worker also serves its shard, no serving task.",
    ),
    server_nodes: int = typer.Option(
        0,
        "--server-nodes",
        help="Put the serving ranks on this many nodes of their own (the first ones; the workers on "
        "the rest). 0: beside the workers.",
    ),
    gpus_per_worker: int = typer.Option(
        0, "--gpus-per-worker", help="0: CPU workers; 1: one GPU per worker (each worker uses one)."
    ),
    gpus_per_node: int = typer.Option(
        None, "--gpus-per-node", help="The nodes' GPU count: refuse a shape that cannot fit on them."
    ),
    time: str = typer.Option("01:00:00", "--time", help="Time limit, [D-]HH:MM:SS."),
    partition: str = typer.Option(None, "--partition", help="Partition."),
    account: str = typer.Option(None, "--account", help="Account to charge."),
    qos: str = typer.Option(None, "--qos", help="Quality of service."),
    mem: str = typer.Option(None, "--mem", help="Memory per node (e.g. 64G)."),
    constraint: str = typer.Option(None, "--constraint", help="Node features (e.g. a100)."),
    exclusive: bool = typer.Option(False, "--exclusive", help="Whole nodes for the job."),
    setup: str = typer.Option(
        None, "--setup", help="Shell lines run before qtrain: 'module load cuda; source ~/env/bin/activate'."
    ),
    python: str = typer.Option(
        None, "--python", help="The python of the environment to run (its qtrain; default: this one)."
    ),
    backend: str = typer.Option(
        "mpi",
        "--backend",
        help="runtime.backend of the job: mpi (the template's MPI launcher, QTRAIN_LAUNCHER) or torch "
        "(torch.distributed with gloo, launched by srun: QTRAIN_LAUNCHER=srun-torch).",
    ),
) -> None:
    """Print an sbatch script for this shape (save it and submit it with sbatch): `qtrain train
    CONFIG`, or `qtrain run SCRIPT -- ARGS` with --script."""
    from qtrain.cli.errors import fail
    from qtrain.shipped import resolve_config

    targets = list(targets or [])
    job = None
    if script is not None:
        job = _script_job(script, targets, config_option, overrides)
        config = None
    elif config_option is not None or overrides:
        fail("-c/--config and --set go with --script; a config job takes its config as the argument")
    elif len(targets) != 1:
        fail("qtrain slurm render: give one CONFIG, or --script SCRIPT [-- ARGS]")
    else:
        config = targets[0]

    if gpus_per_worker not in (0, 1):
        fail(
            f"--gpus-per-worker {gpus_per_worker}: each worker computes on one GPU (0: CPU workers, 1: GPU "
            "workers); to use more GPUs, run more workers"
        )
    colocated = servers.strip().lower() == "colocated"
    if not colocated and not (servers.strip().isdigit() and int(servers) >= 1):
        fail(f"--servers {servers!r}: a count of serving ranks >= 1, or colocated")
    count = 1 if colocated else int(servers)
    try:
        shape = JobShape(
            nodes,
            workers,
            gpus_per_worker == 1,
            time,
            servers=count,
            server_nodes=server_nodes,
            backend=backend,
            colocated=colocated,
        )
    except ValueError as exc:
        fail(str(exc))
    if not TIME.fullmatch(time):
        fail(f"--time {time!r} must look like HH:MM:SS or D-HH:MM:SS")
    if mem is not None and not MEM.fullmatch(mem):
        fail(f"--mem {mem!r} must be a size like 64G or 512000M")
    if gpus_per_node is not None and shape.gpus and max(shape.workers_per_node()) > gpus_per_node:
        need = (
            server_nodes + -(-workers // gpus_per_node) if server_nodes else -(-shape.tasks // gpus_per_node)
        )
        fail(
            f"{workers} GPU workers on {nodes} node(s) put {max(shape.workers_per_node())} workers on a node "
            f"with {gpus_per_node} GPUs: use --nodes {need} (or fewer workers)"
        )
    shape.sbatch = {
        k: v
        for k, v in (
            ("partition", partition),
            ("account", account),
            ("qos", qos),
            ("mem", mem),
            ("constraint", constraint),
        )
        if v is not None
    }
    if exclusive:
        shape.sbatch["exclusive"] = None
    shape.setup = setup
    if config is not None:
        path = resolve_config(config)
        if not path.is_file():
            fail(f"config file {config!r} does not exist")
    if not TEMPLATE.is_file():
        fail(f"the batch template {TEMPLATE} is missing from this installation of qtrain")
    qtrain_bin = _this_qtrain() if python is None else Path(python).parent / "qtrain"
    if python is not None and not Path(python).exists():
        fail(f"--python {python!r} does not exist")
    if job is not None and job.run_options is None and (count > 1 or colocated):
        value = "colocated" if colocated else count
        typer.echo(
            f"qtrain slurm render: warning: the job's shape is runtime.servers={value}; the script's own "
            f"config must set runtime.servers={value} (or give it -c/--set, and qtrain run sets it)",
            err=True,
        )
    try:
        text = render_script(
            shape, None if job else str(path.resolve()), Path.cwd(), TEMPLATE.read_text(), qtrain_bin, job
        )
    except ValueError as exc:  # a value no #SBATCH line can hold
        fail(str(exc))
    typer.echo(text, nl=False)


def _script_job(script: str, args: list[str], config: str | None, overrides: list[str]) -> ScriptJob:
    """--script's job, or a one-line refusal: a script that does not exist, a path or an argument
    with a line break (it would end the job script's line), qtrain run options with whitespace
    (the template splits them on it)."""
    from qtrain.cli.errors import fail
    from qtrain.shipped import resolve_config

    for text, what in [(script, "--script"), *((a, "--script argument") for a in args)]:
        if "\n" in text or "\r" in text or "\0" in text:
            fail(f"{what} {text!r}: a line break or NUL cannot go into a job script")
    path = Path(script)
    if not path.is_file():
        fail(f"--script {script!r}: no such file")
    options = None
    if config is not None or overrides:
        options = []
        if config is not None:
            resolved = resolve_config(config)
            if not resolved.is_file():
                fail(f"config file {config!r} does not exist")
            options += ["-c", str(resolved.resolve())]
        options += [w for o in overrides for w in ("--set", o)]
        for o in options:
            if not o or any(c.isspace() for c in o) or "\0" in o:
                fail(
                    f"-c/--set value {o!r}: whitespace cannot go into QTRAIN_RUN_OPTIONS "
                    "(the job splits on it)"
                )
    return ScriptJob(str(path.resolve()), args, options)


def _this_qtrain() -> Path:
    """The ``qtrain`` of this installation (beside its python), which the job runs."""
    import sys

    return Path(sys.executable).parent / "qtrain"
