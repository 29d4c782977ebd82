"""Every algorithm's complete state survives a checkpoint file: the simulator's run of 2N steps,
and its checkpoint at step N restored into fresh engines (server state, master and replica
weights, every worker's state, data positions, RNG) and run for N more steps, end with the same
parameters bit for bit. This is the part of resume that depends on the algorithm; the MPI path
around it (distribution of the checkpoint to the ranks) is tested under mpiexec for three
algorithms in test_mpi_resume_and_trace.py (all seven in make soak)."""

import pytest
import torch

from qtrain.config import load_config
from qtrain.engine.channel import InProcessChannel
from qtrain.engine.recorder import Recorder
from qtrain.engine.run_plan import RunPlan
from qtrain.engine.simulator import simulate
from qtrain.engine.snapshots import rng_restore, worker_restore
from qtrain.engine.step import ServerStep, WorkerStep
from qtrain.engine.topology import Topology
from qtrain.io.checkpoint import read_checkpoint
from qtrain.io.run_dir import params_sha256

ALGORITHMS = ["sgd", "adam", "ecq-sgd", "qadam", "efficient-adam", "qcmd-adagrad", "qrda-adagrad"]
N, WORKERS = 6, 2


def _continue_from(path, cfg) -> str:
    """Restore the checkpoint at ``path`` into fresh engines, run to ``train.steps``; the sha."""
    tree = read_checkpoint(path)[0]
    device = torch.device("cpu")
    plan, server_model = RunPlan.build(cfg, Topology.parameter_server(WORKERS + 1), device)
    part, ds = plan.partition, plan.setup.dataset
    server = plan.server_engine(server_model.params)
    server.master.copy_(tree["params"])
    server.replica.copy_(tree["replica_params"])
    server.load_state_dict(tree["server"])
    rng_restore(tree["server"]["rng"])
    channel = InProcessChannel(part, WORKERS)
    workers, samplers = [], []
    for w in range(WORKERS):
        replica = plan.model(device)
        replica.params.copy_(tree["replica_params"])
        engine, sampler = plan.worker_engine(w, device), plan.sampler(w)
        worker_restore(tree["workers"][str(w + 1)], engine, [sampler])
        workers.append(WorkerStep(engine, replica, channel.worker(w), part))
        samplers.append(sampler)
    server_step = ServerStep(server, channel, part, Recorder(plan.setup, plan.topology, part, lambda _: None))
    for step in range(tree["step"] + 1, plan.setup.steps + 1):
        for w, sampler in zip(workers, samplers, strict=True):
            idx = sampler.next_batch()
            w.compute(step, ds.x_train[idx], ds.y_train[idx], ds.task)
        server_step.run(step)
        for w in workers:
            w.exchange(step)
    return params_sha256(server_model.params)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_resumes_bit_exactly_from_its_checkpoint(tmp_path, name):
    cfg = load_config(f"configs/{name}.yaml", [f"train.steps={2 * N}", f"checkpoint.every={N}"])
    whole = simulate(cfg, WORKERS, tmp_path / "run", log=lambda _: None)
    resumed = _continue_from(tmp_path / "run" / "checkpoints" / f"step-{N:07d}.h5", cfg)
    assert resumed == whole["params_sha256"]


@pytest.mark.parametrize("name, warmup", [("efficient-adam", N), ("qrda-adagrad", N - 2), ("qadam", N + 2)])
def test_a_resume_across_the_uncompressed_warm_up_is_bit_exact(tmp_path, name, warmup):
    """The switch to the configured codecs as the resumed run's first step (W = N), before the
    checkpoint (W < N) and after it (W > N)."""
    cfg = load_config(
        f"configs/{name}.yaml",
        [f"train.steps={2 * N}", f"checkpoint.every={N}", f"algorithm.uncompressed_steps={warmup}"],
    )
    whole = simulate(cfg, WORKERS, tmp_path / "run", log=lambda _: None)
    resumed = _continue_from(tmp_path / "run" / "checkpoints" / f"step-{N:07d}.h5", cfg)
    assert resumed == whole["params_sha256"]
