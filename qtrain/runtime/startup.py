"""Start-up agreement: every rank builds its view of the run; all agree, or all refuse (exit 2)
with one line from rank 0. The backend's pickled object collectives are fine here (never on the
hot path)."""

from __future__ import annotations

import hashlib
import os
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import qtrain
from qtrain.engine.backend import Backend, DeviceBuffers

LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "MPI_LOCALNRANKS")


class Refused(Exception):
    """A reason, known to every rank, to exit 2 before training."""


@dataclass
class WorldInfo:
    """What every rank learned about the others at start-up."""

    devices: list[str]
    hosts: list[str]
    cuda: DeviceBuffers  # whether device buffers go to the backend directly
    mpi_library: str  # the backend's library in one line (Backend.library)
    version: str = field(default=qtrain.__version__)
    waits: str = ""  # how this node's ranks wait for messages (runtime/waiting.py), said at start-up
    backend: str = "mpi"  # what carries the messages (Backend.name)

    def announce(self, plan, echo, resume, title: str = "qtrain train", config_workers: bool = True) -> None:
        """What the serving rank prints before training: plan, wire cost, CUDA-aware decision, ranks;
        with ``config_workers``, a note when the config's ``workers`` is not the world's."""
        from qtrain.codecs import get_codec
        from qtrain.engine.memory_estimate import describe_estimate

        s, part, topo = plan.setup, plan.partition, plan.topology
        n = part.numel
        fp32 = part.wire_bytes(get_codec("none"))
        steps = f"{s.steps} steps" if s.steps else "steps decided by the workers' loop"
        servers = _count(len(topo.servers), "server")
        ranks = (
            f"{topo.num_workers} workers, each serving 1/{topo.num_workers} (co-located)"
            if topo.colocated
            else f"{servers} + {topo.num_workers} workers"
        )
        echo(f"{title}: {s.algorithm.name}, {ranks}, {steps}, {n} parameters in {part.describe()}")
        echo(f"  {describe_estimate(s, part, topo.num_workers)}")
        recipe = plan.recipe()
        if recipe:
            echo(f"  recipe: {recipe[2:]}")
        ds = s.dataset
        if getattr(ds, "x_train", None) is not None:  # the built-in data (a library run's is the user's)
            what = f"{ds.outputs} classes" if ds.task != "regression" else f"{ds.outputs} target(s)"
            sizes = f"{len(ds.x_train)} train / {len(ds.x_test)} test samples"
            echo(f"  data {ds.name}: {ds.describe_task()}, {what}, {sizes}")
        if config_workers and s.cfg.workers != topo.num_workers:
            echo(
                f"  note: the config says workers: {s.cfg.workers}, but {topo.world_size} ranks make "
                f"{topo.num_workers} workers; the launched world decides (workers is "
                "`qtrain simulate`'s default)"
            )
        for name, link, extra in (
            ("uplink  ", s.uplink, ""),
            ("downlink", s.downlink, f" [{s.algorithm.downlink_mode}]"),
        ):
            b = part.wire_bytes(link.codec)
            note = "" if link.codec.fixed_size else " at most"
            echo(
                f"  {name} {link.describe()}{extra}: {8 * b / n:.3f} bits/element,{note} {b} B/worker/step "
                f"vs {fp32} B fp32 ({fp32 / b:.1f}x less)"
            )
        how = "device buffers go to it directly" if self.cuda.enabled else "host-staged buffers"
        if self.backend == "mpi":
            echo(f"  CUDA-aware MPI: {self.cuda.answer} ({self.cuda.how}); {how}")
        else:
            echo(f"  backend: {self.mpi_library} (runtime.backend {self.backend}); {how} ({self.cuda.how})")
        echo(f"  rank 0's node: {self.waits}")
        echo(
            "  ranks: "
            + ", ".join(
                f"{r}: {d} on {h}" for r, (d, h) in enumerate(zip(self.devices, self.hosts, strict=True))
            )
        )
        if resume is not None:
            fresh = " with fresh worker state (--reset-worker-state)" if resume.worker_state_reset else ""
            echo(f"  resuming from {resume.path} at step {resume.step}{fresh}")


LIBRARY_USAGE = (
    "a qtrain session needs at least 2 MPI ranks (rank 0 serves, ranks 1.. train): run "
    "`mpiexec -n 3 python SCRIPT` or `mpiexec -n 3 qtrain run SCRIPT`"
)


def _world_too_small_message(usage: str | None = None, backend: str = "mpi") -> str:
    if backend == "torch":
        return (
            "a qtrain job needs at least 2 ranks (rank 0 serves, ranks 1.. train): "
            "run `torchrun --nproc-per-node 3 ...`"
        )
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return (
                f"the launcher started {value} processes ({var}) but MPI sees a world of 1: mpi4py is linked "
                "against a different MPI than the launcher (e.g. the mpich wheel under Open MPI's mpirun); "
                "see README, 'Ranks come up as singletons'"
            )
    if usage is not None:
        return usage
    return (
        "qtrain train needs at least 2 MPI ranks (rank 0 = server, ranks 1.. = workers): "
        "run `mpiexec -n 3 qtrain train CONFIG`, or `qtrain simulate CONFIG --workers N` without MPI"
    )


def agree_on_builtin(backend: Backend, config: str, overrides: list[str], svc, arguments: str = ""):
    """``qtrain train``'s start-up: every rank loads the config, its data and its model (the
    config's, seeded, not yet flattened) and the ranks agree on all three. (Topology, RunSetup,
    this rank's nn.Module, WorldInfo), or Refused on every rank."""
    from qtrain.engine.memory_estimate import require_rank_fits
    from qtrain.engine.partition import Partition
    from qtrain.engine.setup import build_module, build_setup

    def build(cfg, topology, device):
        setup = build_setup(cfg, topology.num_workers)
        module = build_module(setup)
        numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
        partition = Partition.for_setup(setup, numel, len(topology.servers))
        serves_only = not topology.is_worker
        require_rank_fits(setup, partition, topology.num_workers, serves_only, topology.rank)
        return setup, module

    return _agree(backend, config, overrides, svc, build, arguments, None)


def agree_on_config(backend: Backend, config: str | None, overrides: list[str], svc, arguments: str = ""):
    """The library's start-up (``qtrain.init``): every rank loads the config and the ranks agree on
    it and on ``arguments`` (the rest of the request: output directory, resume, ...), before any
    model exists (the workers bring theirs later). (Topology, RunSetup, None, WorldInfo)."""
    from qtrain.engine.setup import build_library_setup

    def build(cfg, topology, device):
        return build_library_setup(cfg, topology.num_workers), None

    return _agree(backend, config, overrides, svc, build, arguments, LIBRARY_USAGE)


def _agree(backend: Backend, config, overrides, svc, build, arguments: str, usage: str | None):
    """Load the config on every rank, build what ``build(cfg, topology, device)`` returns (a plan
    or setup, and this rank's model or None), and agree: on success everywhere, on the resolved
    config, the versions and ``arguments``, and on the models' names and shapes."""
    from qtrain.config import ConfigError, load_config
    from qtrain.engine.topology import Topology
    from qtrain.kernels import set_threads as set_kernel_threads
    from qtrain.runtime import faults
    from qtrain.runtime.model_agreement import first_difference, model_signature
    from qtrain.runtime.placement import choose_device, oversubscribed
    from qtrain.runtime.services import process_start, set_local_peers
    from qtrain.runtime.waiting import set_spin

    rank, size = backend.rank, backend.size
    if size < 2:
        raise Refused(_world_too_small_message(usage, backend.name))
    local = backend.node_rank()  # collective: every rank calls it
    topology = Topology.parameter_server(size, rank, backend)  # until the config says how many serve
    error = fingerprint = plan = model = cuda = signature = None
    device = "?"
    try:
        cfg = load_config(config, overrides)
        # ranks 0..K-1 serve (runtime.servers), or every rank (colocated); every rank has the same
        # config or is refused below
        if cfg.runtime.colocated:
            topology = Topology.colocated_ranks(size, rank, backend)
        else:
            topology = Topology.parameter_server(size, rank, backend, servers=int(cfg.runtime.servers))
        svc.watchdog.set_timeout(cfg.runtime.timeout_s, "set-up: data and model")
        _check_backend(cfg.runtime.backend, backend.name, cfg.runtime.timeout_s)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
            set_kernel_threads(cfg.runtime.threads)
        svc.fault = faults.parse()
        device = (
            choose_device(cfg.runtime.device, local)
            if topology.is_worker
            else choose_device(cfg.runtime.server_device, 0, "runtime.server_device")
        )
        plan, model = build(cfg, topology, device)
        cuda = backend.device_buffers(cfg.runtime.cuda_aware)
        text = _config_text(plan) + qtrain.__version__ + torch.__version__ + arguments
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        signature = model_signature(model) if model is not None else None
    except (ConfigError, ValueError, OSError) as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as one line, the traceback goes to stderr
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    host = f"{socket.gethostname()} pid {os.getpid()}"
    start = process_start(os.getpid())
    reports = backend.allgather((error, fingerprint, str(device), host, signature, start))
    me = socket.gethostname()
    set_local_peers([(int(r[3].rsplit(" ", 1)[1]), r[5]) for r in reports if r[3].split(" pid ")[0] == me])
    failed = [(r, e) for r, (e, *_rest) in enumerate(reports) if e]
    if failed:
        r, e = failed[0]
        raise Refused(e + ("" if len(failed) == size else f" (on rank {r})"))
    if len({fp for _, fp, *_ in reports}) > 1:
        odd = [r for r, (_, fp, *_) in enumerate(reports) if fp != reports[0][1]]
        raise Refused(
            f"ranks disagree on the resolved config, the command line or versions: rank(s) {odd} "
            "differ from rank 0 (different config files, overrides, arguments or qtrain/torch versions "
            "on the nodes?)"
        )
    if model is not None:
        for r, report in enumerate(reports):
            why = first_difference(reports[0][4], report[4])
            if why:
                raise Refused(
                    f"rank {r}'s model differs from rank 0's: it {why} (model.name {cfg.model.name!r})"
                )
    world = WorldInfo(
        [r[2] for r in reports], [r[3] for r in reports], cuda, backend.library(), backend=backend.name
    )
    # ranks on this host share its cores whatever MPI's shared-memory view says (network
    # namespaces, MPIR_CVAR_NOLOCAL): count them by host name
    ranks_here = sum(r[3].split(" pid ")[0] == socket.gethostname() for r in reports)
    crowded = oversubscribed(ranks_here, torch.get_num_threads())
    set_spin(not crowded)
    world.waits = (
        f"{ranks_here} ranks x {torch.get_num_threads()} threads on {len(os.sched_getaffinity(0))} cores: "
        + ("oversubscribed, waits sleep between tests" if crowded else "waits yield for 2 ms, then sleep")
    )
    return topology, plan, model, world


LAUNCH = {
    "mpi": "launch it with mpiexec/mpirun or srun --mpi=...",
    "torch": "launch it with torchrun, or with srun and QTRAIN_BACKEND=torch, MASTER_ADDR and MASTER_PORT "
    "(qtrain slurm render --backend torch)",
}


def _check_backend(setting: str, running: str, timeout_s: float = 0.0) -> None:
    """``runtime.backend`` must name the backend this job was launched with (or ``auto``); under
    the torch backend, qtrain's deadline must end before gloo's own timeout, which bounds every
    wait too (``runtime/backends/torch_dist.py``)."""
    if setting not in ("auto", running):
        raise ValueError(
            f"runtime.backend={setting} but this job runs on the {running} backend: {LAUNCH[setting]} "
            "(docs/configuration.md, runtime.backend)"
        )
    if running == "torch":
        from qtrain.runtime.backends.torch_dist import TIMEOUT_ENV, timeout

        gloo_s = timeout().total_seconds()
        if timeout_s >= gloo_s:
            raise ValueError(
                f"runtime.timeout_s={timeout_s:g} but gloo ends every wait after {gloo_s:g} s "
                f"({TIMEOUT_ENV}): set runtime.timeout_s below it, or raise {TIMEOUT_ENV}"
            )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _config_text(plan_or_setup) -> str:
    text = getattr(plan_or_setup, "config_text", None)
    if text is not None:
        return text
    from qtrain.config import dump_yaml
    from qtrain.engine.setup import resolved_config

    return dump_yaml(resolved_config(plan_or_setup.cfg, plan_or_setup))


def prepare_outputs(
    backend: Backend,
    server: int,
    algorithm: str,
    out: str | None,
    resume: str | None = None,
    overwrite: bool = False,
    echo=None,
    kind: str = "train",
) -> Path:
    """The output directory (default ``runs/KIND-ALGORITHM-TIME``): the serving rank names it and
    checks it (another run's files are refused, or removed with ``overwrite``; ``resume`` is the
    ``--resume`` argument, see :func:`~qtrain.io.run_dir.prepare_out_dir`), then every rank
    creates it."""
    import time

    from qtrain.io.run_dir import prepare_out_dir

    default = f"runs/{kind}-{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(backend.bcast(out or default, root=server))
    error = None
    if backend.rank == server:
        try:
            _, removed = prepare_out_dir(out_dir, resume, overwrite)
            if removed and echo is not None:
                echo(f"qtrain: --overwrite: removed {removed} from {out_dir}")
        except ValueError as exc:
            error = str(exc)
    error = backend.bcast(error, root=server)
    if error is None:
        try:
            prepare_out_dir(out_dir, resume=True)  # every rank (other nodes) creates it
        except ValueError as exc:
            error = str(exc)
    errors = [e for e in backend.allgather(error) if e]
    if errors:
        raise Refused(errors[0])
    return out_dir
