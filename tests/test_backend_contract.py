"""The backend contract (``engine/backend.py``): the same script (``backend_contract_script.py``)
on 3 ranks under MPI (``mpiexec``) and under torch.distributed with gloo (``torchrun``), an abort
from one rank ending the whole job under each, and the choice of backend and what
``torch_dist.unavailable`` says, in process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "backend_contract_script.py"
REPO = SCRIPT.parent.parent
RANKS = 3
LAUNCH_TIMEOUT_S = 120
# what the launchers and the schedulers set, cleared so that a test run inside one sees none of it
LAUNCH_VARIABLES = (
    "QTRAIN_BACKEND",
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
)


def mpi_command(*args: str) -> tuple[list[str], dict[str, str]]:
    from qtrain.runtime.backends.mpi import unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(why)
    try:
        from qtrain.runtime.mpi_info import launcher
    except ImportError:
        launcher = None
    mpiexec = launcher() if launcher is not None else [str(Path(sys.executable).parent / "mpiexec")]
    return [*mpiexec, "-n", str(RANKS), sys.executable, str(SCRIPT), *args], {"QTRAIN_BACKEND": "mpi"}


def torch_command(*args: str) -> tuple[list[str], dict[str, str]]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch has no torch.distributed with gloo")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS)]
    return [*run, str(SCRIPT), *args], {}


COMMANDS = {"mpi": mpi_command, "torch": torch_command}


def launch(backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script on 3 ranks under ``backend``; the whole process group is killed at the
    launch timeout (a hung rank must fail the test, not hold it)."""
    cmd, extra = COMMANDS[backend](*args)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(extra, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{backend}: no end within {LAUNCH_TIMEOUT_S} s\n{out}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def meets_the_contract(backend: str) -> None:
    p = launch(backend)
    assert p.returncode == 0, f"{backend}: exit {p.returncode}\n{p.stdout}\n{p.stderr[-6000:]}"
    ok = sorted(int(r) for r in re.findall(r"^contract ok rank (\d+)$", p.stdout, re.MULTILINE))
    assert ok == list(range(RANKS)), f"{backend}: the ranks that passed: {ok}\n{p.stdout}"


@pytest.mark.mpi
def test_mpi_backend_meets_the_contract():
    meets_the_contract("mpi")


def test_torch_backend_meets_the_contract():
    meets_the_contract("torch")


def abort_ends_the_whole_job(backend: str) -> None:
    p = launch(backend, "abort")
    assert p.returncode != 0, f"{backend}: exit 0 after an abort\n{p.stdout}\n{p.stderr[-6000:]}"
    assert "rank 1 aborts" in p.stdout, p.stdout
    assert "outlived the abort" not in p.stdout, p.stdout


# make soak: MPI's abort from a failing rank is what every failure test of test_mpi_train.py ends with
@pytest.mark.mpi
@pytest.mark.soak
def test_mpi_abort_from_one_rank_ends_the_whole_job():
    abort_ends_the_whole_job("mpi")


def test_torch_abort_from_one_rank_ends_the_whole_job():
    abort_ends_the_whole_job("torch")


# ---------------------------------------------------------------- in process


@pytest.fixture
def bare_env(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "launched",
    [
        {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500"},
        {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "MASTER_PORT": "29500"},
    ],
    ids=["torchrun", "srun"],
)
def test_torch_unavailable_names_master_addr_when_the_launch_did_not_set_it(bare_env, launched):
    from qtrain.runtime.backends.torch_dist import unavailable

    for name, value in launched.items():
        bare_env.setenv(name, value)
    why = unavailable()
    assert why is not None and "MASTER_ADDR" in why and "MASTER_PORT is" not in why
    assert "\n" not in why and "torchrun" in why and "srun" in why
    bare_env.setenv("MASTER_ADDR", "127.0.0.1")
    assert unavailable() is None


def test_torch_unavailable_says_how_to_launch_without_a_rank(bare_env):
    from qtrain.runtime.backends.torch_dist import unavailable

    why = unavailable()
    assert why is not None and "\n" not in why
    assert "RANK" in why and "SLURM_PROCID" in why and "torchrun --nproc-per-node" in why


def test_chosen_backend_is_torch_under_torchrun_and_refuses_an_unknown_name(bare_env):
    from qtrain.runtime.backends import chosen, unavailable

    assert chosen() == "mpi"
    bare_env.setenv("TORCHELASTIC_RUN_ID", "job-7")
    assert chosen() == "torch"
    bare_env.setenv("QTRAIN_BACKEND", "mpi")
    assert chosen() == "mpi"
    bare_env.setenv("QTRAIN_BACKEND", "banana")
    with pytest.raises(ValueError) as refused:
        chosen()
    assert "banana" in str(refused.value) and "\n" not in str(refused.value)
    assert unavailable() == str(refused.value)  # the line qtrain.init and qtrain run exit 2 with
