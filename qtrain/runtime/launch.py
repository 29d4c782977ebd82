"""``qtrain train`` on every rank: world checks, start-up agreement, roles, failure handling.

Start-up is collective and cheap (pickled lower-case mpi4py calls are fine here, never on the hot
path): every rank loads the config and data and reports success or its error with ``allgather``;
rank 0 prints one line and every rank exits 2 when any rank failed or when the ranks' resolved
configs differ. During training an exception on any rank is logged, printed as
``qtrain: rank R failed: ...`` and ends the whole job with ``MPI_Abort``; silent ranks are caught
by deadlines on every wait and by the watchdog.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import qtrain

ABORT_GRACE_S = 0.5
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS", "MPI_LOCALNRANKS")


@dataclass
class RankContext:
    comm: object
    rank: int
    setup: object
    device: torch.device
    model: object  # the FlatModel this rank trains (rank 0: the server's master copy)
    transport: object
    watchdog: object
    stop: object
    log: object
    echo: object
    fault: object
    cuda: object
    devices: list
    out_dir: Path = None
    config_text: str = ""
    hosts: list = None
    mpi_library: str = ""
    resume: dict | None = None
    resume_worker: dict | None = None
    resume_path: Path | None = None


def _err(message: str) -> None:
    print(f"qtrain: error: {message}", file=sys.stderr, flush=True)


def _world_too_small_message() -> str:
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return (
                f"the launcher started {value} processes ({var}) but MPI sees a world of 1: mpi4py is linked "
                "against a different MPI than the launcher (e.g. the mpich wheel under Open MPI's mpirun); "
                "see README, 'Ranks come up as singletons'"
            )
    return (
        "qtrain train needs at least 2 MPI ranks (rank 0 = server, ranks 1.. = workers): "
        "run `mpiexec -n 3 qtrain train CONFIG`, or `qtrain simulate CONFIG --workers N` without MPI"
    )


def _fingerprint(cfg, setup) -> str:
    from qtrain.config import dump_yaml
    from qtrain.engine.setup import resolved_config

    text = dump_yaml(resolved_config(cfg, setup)) + qtrain.__version__ + torch.__version__
    return hashlib.sha256(text.encode()).hexdigest()


def run_train(
    config: str,
    overrides: list[str],
    out: str | None,
    echo=print,
    resume: str | None = None,
    reset_worker_state: bool = False,
) -> int:
    from mpi4py import MPI

    from qtrain.config import ConfigError, dump_yaml, load_config
    from qtrain.engine.setup import build_flat_model, build_setup, resolved_config
    from qtrain.io.run_dir import prepare_out_dir, write_config, write_summary
    from qtrain.runtime import faults, mpi_info
    from qtrain.runtime.rank_log import open_rank_log
    from qtrain.runtime.signals import StopRequest
    from qtrain.runtime.topology import choose_device, local_rank
    from qtrain.runtime.transport import Transport
    from qtrain.runtime.watchdog import Watchdog

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        _err(_world_too_small_message())
        return 2
    stop = StopRequest()
    stop.install(rank)
    from qtrain.config import RuntimeConfig

    def abort(message: str) -> None:
        if log is not None:
            log.error(message)
        _abort(comm)

    log = None
    watchdog = Watchdog(rank, RuntimeConfig().timeout_s, abort).start()
    local = local_rank(comm)  # collective: every rank calls it

    # ---- start-up: every rank builds its view of the run; all agree or all exit 2
    error = fingerprint = None
    setup = cfg = device = model = None
    cuda = None
    try:
        cfg = load_config(config, overrides)
        watchdog.timeout_s = cfg.runtime.timeout_s
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        fault = faults.parse()
        setup = build_setup(cfg, size - 1)
        device = (
            torch.device(cfg.runtime.server_device) if rank == 0 else choose_device(cfg.runtime.device, local)
        )
        model = build_flat_model(setup, device)  # rank 0: the server's master copy
        cuda = mpi_info.decide_cuda_aware(cfg.runtime.cuda_aware)
        fingerprint = _fingerprint(cfg, setup)
    except (ConfigError, ValueError, OSError) as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as one line, the traceback goes to stderr below
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    reports = comm.allgather((error, fingerprint, str(device), f"{socket.gethostname()} pid {os.getpid()}"))
    failed = [(r, e) for r, (e, *_rest) in enumerate(reports) if e]
    if failed:
        watchdog.stop()
        if rank == 0:
            r, e = failed[0]
            where = "" if len(failed) == size else f" (on rank {r})"
            _err(f"{e}{where}")
        return 2
    prints = {fp for _, fp, *_ in reports}
    if len(prints) > 1:
        watchdog.stop()
        if rank == 0:
            odd = [r for r, (_, fp, *_) in enumerate(reports) if fp != reports[0][1]]
            _err(
                f"ranks disagree on the resolved config or versions: rank(s) {odd} differ from rank 0 "
                "(different config files, overrides or qtrain/torch versions on the nodes?)"
            )
        return 2
    out_dir = Path(
        comm.bcast(out or f"runs/train-{cfg.algorithm.name}-{time.strftime('%Y%m%d-%H%M%S')}", root=0)
    )
    try:
        prepare_out_dir(out_dir)
    except ValueError as exc:
        error = str(exc)
    if any(comm.allgather(error)):
        watchdog.stop()
        if rank == 0:
            _err(error or "a rank could not create the output directory")
        return 2
    # ---- resume: rank 0 reads and verifies the checkpoint, every rank gets its part
    config_text = dump_yaml(resolved_config(cfg, setup))
    resume_tree = resume_worker = resume_path = None
    if resume is not None:
        try:
            resume_tree, resume_worker, resume_path = _distribute_checkpoint(
                comm, rank, size, resume, out_dir, config_text, reset_worker_state, echo
            )
        except _StartupRefused as exc:
            watchdog.stop()
            if rank == 0:
                _err(str(exc))
            return 2
        except BaseException as exc:  # noqa: BLE001 - never leave the other ranks waiting
            print(f"qtrain: rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
            _abort(comm)
    log = open_rank_log(out_dir, rank)
    devices = [d for _, _, d, _ in reports]
    hosts = [h for *_, h in reports]
    log.info(
        "qtrain %s, world %d, %s, device %s, cuda-aware %s (%s)",
        qtrain.__version__,
        size,
        hosts[rank],
        device,
        cuda.answer,
        cuda.how,
    )
    if rank == 0:
        write_config(out_dir, config_text)
        _announce(setup, model.numel, size, devices, hosts, cuda, echo)
        if resume_path is not None:
            echo(
                f"  resuming from {resume_path} at step {resume_tree['step']}"
                + (" with fresh worker state (--reset-worker-state)" if reset_worker_state else "")
            )

    watchdog.enter("set-up")
    ctx = RankContext(
        comm,
        rank,
        setup,
        device,
        model,
        None,
        watchdog,
        stop,
        log,
        echo,
        fault,
        cuda,
        devices,
        out_dir=out_dir,
        config_text=config_text,
        hosts=hosts,
        mpi_library=mpi_info.library_version(),
        resume=resume_tree,
        resume_worker=resume_worker,
        resume_path=resume_path,
    )
    try:
        ctx.transport = Transport(
            comm,
            setup.uplink.codec,
            setup.downlink.codec,
            model.numel,
            device,
            cuda.enabled,
            cfg.runtime.timeout_s,
        )
        if rank == 0:
            from qtrain.cli.report import print_summary
            from qtrain.runtime.server_role import run_server

            summary = run_server(ctx)
            summary["hosts"] = hosts
            write_summary(out_dir, summary)
            print_summary(summary, str(out_dir), echo)
        else:
            from qtrain.runtime.worker_role import run_worker

            run_worker(ctx)
    except BaseException as exc:  # noqa: BLE001 - any failure must end the whole job, not hang it
        log.error("failed:\n%s", traceback.format_exc())
        print(f"qtrain: rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        _abort(comm)
    finally:
        watchdog.stop()
    return 0


class _StartupRefused(Exception):
    """A reason, known to every rank, to exit 2 before training."""


def _distribute_checkpoint(comm, rank, size, spec, out_dir, config_text, reset_worker_state, echo):
    """Rank 0 loads and verifies the checkpoint; workers get the replica parameters and their own
    state (numpy over MPI). Returns (tree for this rank, this worker's snapshot or None, path)."""
    from qtrain.engine.snapshots import to_numpy, to_torch
    from qtrain.runtime.resume import load_for_resume

    loaded = error = None
    if rank == 0:
        try:
            loaded = load_for_resume(
                spec,
                out_dir,
                config_text,
                size - 1,
                reset_worker_state,
                warn=lambda m: echo(f"qtrain: warning: {m}"),
            )
        except (ValueError, OSError) as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error:
        raise _StartupRefused(error)
    parts = common = path = None
    if rank == 0:
        tree, path = loaded
        same = len(tree["workers"]) == size - 1 and not reset_worker_state
        parts = [None] + [to_numpy(tree["workers"][str(r)]) if same else None for r in range(1, size)]
        common = to_numpy({"step": tree["step"], "replica_params": tree["replica_params"]})
    mine = comm.scatter(parts, root=0)
    common = comm.bcast(common, root=0)
    if rank == 0:
        return tree, None, path
    return to_torch(common), (to_torch(mine) if mine is not None else None), None


def _abort(comm) -> None:
    """MPI_Abort, after a pause that lets the launcher forward the message we just printed (MPICH's
    hydra tears the job down on the first abort and drops output still in its pipes)."""
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


def _announce(setup, n, size, devices, hosts, cuda, echo) -> None:
    """What rank 0 prints before training: algorithm, codecs, wire cost, CUDA-aware decision, devices."""
    from qtrain.codecs import get_codec

    fp32 = get_codec("none").wire_bytes(n)
    up, down = setup.uplink, setup.downlink
    up_b, down_b = up.codec.wire_bytes(n), down.codec.wire_bytes(n)
    note_up = "" if up.codec.fixed_size else " at most"
    note_down = "" if down.codec.fixed_size else " at most"
    echo(
        f"qtrain train: {setup.algorithm.name}, 1 server + {size - 1} workers, {setup.steps} steps, "
        f"{n} parameters"
    )
    echo(
        f"  uplink   {up.describe()}: {8 * up_b / n:.3f} bits/element,{note_up} {up_b} B/worker/step "
        f"vs {fp32} B fp32 ({fp32 / up_b:.1f}x less)"
    )
    echo(
        f"  downlink {down.describe()} [{setup.algorithm.downlink_mode}]: {8 * down_b / n:.3f} bits/element,"
        f"{note_down} {down_b} B/worker/step vs {fp32} B fp32 ({fp32 / down_b:.1f}x less)"
    )
    echo(
        f"  CUDA-aware MPI: {cuda.answer} ({cuda.how}); "
        f"{'device buffers go to MPI directly' if cuda.enabled else 'host-staged buffers'}"
    )
    echo(
        "  ranks: "
        + ", ".join(f"{r}: {d} on {h}" for r, (d, h) in enumerate(zip(devices, hosts, strict=True)))
    )
