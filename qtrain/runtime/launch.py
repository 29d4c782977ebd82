"""``qtrain train`` on every rank: world checks, start-up agreement, roles, failure handling.

Start-up is collective and cheap (pickled lower-case mpi4py calls are fine here, never on the hot
path): every rank loads the config and data and reports success or its error with ``allgather``;
when any rank failed, or the ranks' resolved configs differ, every rank returns the same refusal
(exit 2) and rank 0 says why. During training an exception on any rank is logged, printed as
``qtrain: rank R failed: ...`` and ends the whole job with ``MPI_Abort``; silent ranks are caught
by deadlines on every wait and by the watchdog.

The pieces are built in dependency order: Topology (from the communicator) -> RunPlan (config,
data, model, Partition) -> output directory and resume point -> RankServices -> Transport -> role.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

from qtrain.engine.divergence import Diverged
from qtrain.io.disk_errors import describe
from qtrain.runtime.services import RankServices, abort
from qtrain.runtime.startup import Outcome, Refused, agree_on_plan, prepare_outputs

__all__ = ["Outcome", "run_train"]

EXPECTED = (OSError, ValueError, Diverged)  # failures whose one line says it all


@dataclass(frozen=True)
class TrainRequest:
    config: str
    overrides: list[str]
    out: str | None = None
    resume: str | None = None
    reset_worker_state: bool = False
    overwrite: bool = False


def run_train(request: TrainRequest, echo=print) -> Outcome:
    """Run ``qtrain train`` on this rank. Returns the outcome: on the serving rank the run's
    summary (the CLI prints it), or a refusal that every rank shares (exit 2)."""
    from mpi4py import MPI

    from qtrain.io.run_dir import write_config
    from qtrain.runtime.resume import distribute_checkpoint
    from qtrain.runtime.transport import Transport

    comm = MPI.COMM_WORLD
    svc = RankServices.start(comm.Get_rank(), echo)
    try:
        topology, plan, model, world = agree_on_plan(comm, request.config, request.overrides, svc)
        out_dir = prepare_outputs(
            comm,
            topology.server,
            plan.setup.algorithm.name,
            request.out,
            bool(request.resume),
            request.overwrite,
            echo if comm.Get_rank() == 0 else None,
        )
        resume = distribute_checkpoint(topology, plan, request, out_dir, echo) if request.resume else None
    except Refused as exc:
        svc.watchdog.stop()
        # rank 0 speaks for all: the serving rank of every Topology, and each rank of a singleton world
        return Outcome(2, error=str(exc) if comm.Get_rank() == 0 else None)
    except BaseException as exc:  # noqa: BLE001 - never leave the other ranks waiting
        _fail(comm, svc, exc)
    try:  # from here on every failure, writing the log or config included, ends the whole job
        svc.open_log(out_dir, world)
        if topology.is_server:
            write_config(out_dir, plan.config_text)
            world.announce(plan, echo, resume)
        cfg = plan.cfg
        transport = Transport(
            topology,
            plan.partition,
            plan.setup.uplink.codec,
            plan.setup.downlink.codec,
            model.device,
            world.cuda.enabled,
            cfg.runtime.timeout_s,
        )
        if topology.is_server:
            from qtrain.io.run_dir import write_summary
            from qtrain.runtime.server_role import run_server

            summary = run_server(plan, model, transport, svc, world, out_dir, resume)
            write_summary(out_dir, summary)
            return Outcome(0, summary=summary, out_dir=out_dir)
        from qtrain.runtime.worker_role import run_worker

        run_worker(plan, model, transport, svc, resume)
        return Outcome(0, out_dir=out_dir)
    except BaseException as exc:  # noqa: BLE001 - any failure must end the whole job, not hang it
        _fail(comm, svc, exc)
    finally:
        svc.watchdog.stop()


def _fail(comm, svc, exc: BaseException) -> NoReturn:
    """Log and print the failure of this rank in one line (an OSError as its reason, errno name
    and file: "No space left on device (ENOSPC): runs/x/trace.h5"), then end every rank
    (MPI_Abort). The traceback goes to the rank log; to stderr only for an unexpected exception
    before the log exists."""
    rank = comm.Get_rank()
    logged = False
    if svc.log is not None:
        try:
            svc.log.error("failed:\n%s", traceback.format_exc())
            logged = True
        except Exception:  # noqa: BLE001 - the log itself may be what failed
            pass
    if not logged and not isinstance(exc, EXPECTED):
        traceback.print_exc()
    print(f"qtrain: rank {rank} failed: {describe(exc)}", file=sys.stderr, flush=True)
    abort(comm)
