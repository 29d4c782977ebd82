"""qtrain over torch.distributed (``runtime.backend: torch``, gloo), launched by ``torchrun``: the
same parameters as MPI for the same config (the simulator's ``params_sha256``, which equals MPI's
bit for bit: test_mpi_train), with two serving ranks and resumed on one; a library script with its
own recipe trains what DDP trains; a config that names the other backend is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mpi_helpers import simulate, summary

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "library_scripts"
# what launchers and schedulers set, cleared so that a test run inside one sees none of it
LAUNCH_VARIABLES = (
    "QTRAIN_BACKEND", "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
)  # fmt: skip


def torchrun(
    nproc: int, *args: str, timeout: int = 180, module: bool = True
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node NPROC -m qtrain ARGS`` (``module=False``: ARGS alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch has no torch.distributed with gloo")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    target = ["-m", "qtrain"] if module else []
    return subprocess.run(
        [*cmd, *target, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


SETS = ["train.steps=12", "train.eval_every=6", "checkpoint.every=6", "runtime.segments=4"]


def test_torch_backend_with_two_serving_ranks_equals_mpi_and_resumes_on_one(tmp_path):
    """efficient-adam (two-way 1-bit error feedback) on 2 workers: 2 serving ranks over gloo end
    with the simulator's parameters (= MPI's); its step-6 checkpoint resumed by 1 serving rank
    over gloo ends there too; the plan line names the backend."""
    sets = [a for s in SETS for a in ("--set", s)]
    p = torchrun(4, "train", "configs/efficient-adam.yaml", *sets, "--set", "runtime.servers=2",
                 "--out", str(tmp_path / "k2"))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "backend: torch " in p.stdout and "gloo (runtime.backend torch)" in p.stdout, p.stdout
    ref = simulate("configs/efficient-adam.yaml", 2, tmp_path / "sim", *SETS)
    k2 = summary(tmp_path / "k2")
    assert k2["backend"] == "torch"
    assert k2["params_sha256"] == ref["params_sha256"]
    assert k2["final_test_loss"] == ref["final_test_loss"]
    checkpoint = tmp_path / "k2" / "checkpoints" / "step-0000006.h5"
    p = torchrun(3, "train", "configs/efficient-adam.yaml", *sets, "--out", str(tmp_path / "k1"),
                 "--resume", str(checkpoint))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    resumed = summary(tmp_path / "k1")
    assert resumed["resumed_from"] == str(checkpoint)
    assert resumed["params_sha256"] == ref["params_sha256"]


def test_a_library_script_over_torchrun_trains_what_ddp_trains(tmp_path):
    """nanoGPT's recipe (two param groups, AdamW's decoupled decay, clipping, the loop's learning
    rate, a GradScaler) under ``torchrun ... qtrain run`` with codec none: every step within float32
    rounding of torch.optim.AdamW on the clipped mean gradient, computed in the script."""
    options = [
        "--set", "algorithm.name=adam", "--set", "algorithm.decoupled_weight_decay=true",
        "--set", "uplink.codec=none", "--set", "downlink.codec=none", "--set", "runtime.segment_bytes=512",
        "--set", "runtime.backend=torch",
    ]  # fmt: skip
    p = torchrun(3, "run", str(SCRIPTS / "recipe.py"), *options, "--out", str(tmp_path),
                 "--", "--steps", "6", "--report", str(tmp_path), "--reference")  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    ref = json.loads((tmp_path / "report.json").read_text())
    assert len(ref["distance"]) == 6
    for step, d in enumerate(ref["distance"], 1):
        assert d["relative"] < 1e-5, (step, d)
        assert d["norm"] == pytest.approx(d["torch_norm"], rel=1e-5), (step, d)
    assert summary(tmp_path)["world_size"] == 3


def test_every_codec_crosses_the_transport_both_ways_intact_over_gloo():
    """``python -m qtrain.runtime.smoke`` (tests/test_mpi_smoke.py under MPI) under torchrun with two
    serving ranks: the variable-size codecs' record-then-message uplinks and two-broadcast
    downlinks included, every message checked byte for byte and by its decoded values."""
    from qtrain.runtime.smoke import CASES

    p = torchrun(4, "-m", "qtrain.runtime.smoke", "2", module=False)
    assert p.returncode == 0, p.stdout + p.stderr
    messages = len(CASES) * 2 * 2  # 2 segments, each of the 2 workers' each way
    assert p.stdout.splitlines() == [
        f"smoke: {len(CASES)} codecs x 2 segments: {messages} uplink and {messages} downlink messages "
        "checked, 0 failures"
    ], p.stdout + p.stderr


def test_a_torchrun_job_whose_config_names_mpi_is_refused_by_rank_0_in_one_line(tmp_path):
    p = torchrun(3, "train", "configs/sgd.yaml", "--set", "runtime.backend=mpi", "--out", str(tmp_path / "o"))
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.startswith("qtrain:")]
    assert lines == [
        "qtrain: error: runtime.backend=mpi but this job runs on the torch backend: launch it with "
        "mpiexec/mpirun or srun --mpi=... (docs/configuration.md, runtime.backend)"
    ], p.stderr
    assert not (tmp_path / "o").exists()


def test_a_config_that_names_the_other_backend_is_refused_in_one_line(monkeypatch):
    from qtrain.runtime.startup import _check_backend

    _check_backend("auto", "torch")
    _check_backend("torch", "torch")
    with pytest.raises(ValueError) as caught:
        _check_backend("mpi", "torch")
    said = str(caught.value)
    assert said.startswith(
        "runtime.backend=mpi but this job runs on the torch backend: launch it with mpiexec"
    )
    assert "\n" not in said
    wanted = "runtime.backend=torch but this job runs on the mpi backend: launch it with torchrun"
    with pytest.raises(ValueError, match=wanted):
        _check_backend("torch", "mpi")
    # under torch, qtrain's deadline must end before gloo's timeout (which bounds every wait)
    monkeypatch.setenv("QTRAIN_GLOO_TIMEOUT_S", "600")
    _check_backend("auto", "torch", 599.0)
    with pytest.raises(ValueError, match=r"^runtime.timeout_s=600 but gloo ends every wait after 600 s "):
        _check_backend("auto", "torch", 600.0)
    _check_backend("auto", "mpi", 10_000.0)
