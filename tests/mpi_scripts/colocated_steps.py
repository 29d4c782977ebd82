"""Co-located ranks under a real backend (``runtime/colocated.py``): every rank is worker r and the
owner of 1/N of the segments, all in one process, and must end with the parameters of the
simulator's K = 1 run with N workers, bit for bit (``tests/test_colocated.py`` launches it):

    QTRAIN_BACKEND=mpi mpiexec -n 3 python tests/mpi_scripts/colocated_steps.py CASE...
    torchrun --standalone --nproc-per-node 3 tests/mpi_scripts/colocated_steps.py CASE...

A CASE is ``CONFIG[;KEY=VALUE...]`` (configs/NAME.yaml and its overrides). Every rank runs the
step driver's worker step and, inside it, its own server turn (``WorkerStep.serve``), with the
step loop of a worker: the starting weights, each step's batch, compute and exchange, the end's
control frame. At the end the owners' master shards are gathered on rank 0, which runs the
simulator with the same config and prints ``CASE colocated SHA simulator SHA`` per case; every
rank prints ``colocated done rank R`` last. A failure prints its traceback and aborts the job.
"""

from __future__ import annotations

import sys
import traceback

import numpy as np
import torch

from qtrain.config import load_config
from qtrain.engine.records import FLAG_END
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.serving_loop import ServingTurns
from qtrain.engine.simulator import simulate
from qtrain.engine.step import ServerStep, StepResult, WorkerStep
from qtrain.engine.topology import Topology
from qtrain.io.run_dir import params_sha256
from qtrain.runtime.backends import world
from qtrain.runtime.colocated import open_colocated
from qtrain.runtime.shard_serving import ShardRecorder, total_square_over

CPU = torch.device("cpu")


class _Quiet:
    """Nothing between steps: the harness checks the steps alone."""

    def sync_buffers(self, step: int) -> None:
        pass

    def checkpoint(self, step: int) -> None:
        pass

    def after_step(self, step: int, result: StepResult) -> None:
        pass

    def stop_agreed(self, step: int, reason: str) -> None:
        pass


def run_case(backend, case: str) -> str | None:
    name, *sets = case.split(";")
    cfg = load_config(f"configs/{name}.yaml", sets)
    topo = Topology.colocated_ranks(backend.size, backend.rank, backend)
    plan, master_model = RunPlan.build(cfg, topo, CPU)
    part, setup = plan.partition, plan.setup
    worker_ch, server_ch = open_colocated(
        topo, part, setup.uplink.codec, setup.downlink.codec, CPU, False, cfg.runtime.timeout_s
    )
    shard = part.shard(topo.rank)
    engine = plan.server_engine(master_model.params[shard], owner=topo.rank)
    driver = ServerStep(
        engine,
        server_ch,
        part,
        ShardRecorder(),
        names=[f"rank {r}" for r in topo.workers],
        segments=server_ch.mine,
    )
    driver.total_square = total_square_over(server_ch.comms.servers)
    turns = ServingTurns(driver, _Quiet(), 0)
    replica = plan.model(CPU)
    replica.params.copy_(master_model.params)
    worker = WorkerStep(plan.worker_engine(topo.rank, CPU), replica, worker_ch, part)
    worker.serve = turns.turn
    sampler, ds = plan.sampler(topo.rank), setup.dataset
    driver.send_initial()
    worker.receive_initial()
    for step in range(1, setup.steps + 1):
        idx = sampler.next_batch()
        worker.compute(step, ds.x_train[idx], ds.y_train[idx], ds.task)
        worker.exchange(step)
    worker.send_control(setup.steps + 1, FLAG_END)
    assert turns.ended and turns.served.last_step == setup.steps, turns.served
    shards = backend.gather(engine.master.detach().numpy().copy(), root=0)
    if backend.rank != 0:
        return None
    mine = params_sha256(torch.from_numpy(np.concatenate(shards)))
    ref = simulate(load_config(f"configs/{name}.yaml", sets), backend.size, None, log=lambda _: None)
    return f"{case} colocated {mine} simulator {ref['params_sha256']}"


def main() -> None:
    backend = world()
    try:
        for case in sys.argv[1:]:
            line = run_case(backend, case)
            if line is not None:
                print(line, flush=True)
        print(f"colocated done rank {backend.rank}", flush=True)
        backend.finalize()  # a clean end (gloo aborts a process whose peers still talk to it)
    except BaseException:  # noqa: BLE001 - never leave the other ranks waiting
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        backend.abort()


if __name__ == "__main__":
    main()
