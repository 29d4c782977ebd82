"""Divergence stops training with `diverged at step N: ...` and a non-zero exit, in the simulator and
under mpiexec, and never leaves a non-finite checkpoint (issue #14 item 2: lr=1e6 once ran to the
end with rc 0 and NaN checkpoints that inspect called verified)."""

import subprocess
import sys

import pytest
import torch
from engine_helpers import build
from mpi_helpers import mpi_train

from qtrain.config import AlgorithmConfig, LinkConfig
from qtrain.engine.divergence import Diverged, OutOfRange, require_finite
from qtrain.io.checkpoint import read_checkpoint, write_checkpoint
from qtrain.io.run_dir import params_sha256

QTRAIN = [sys.executable, "-m", "qtrain"]
LR_1E6 = ["--set", "data.name=synthetic-regression", "--set", "algorithm.lr=1e6", "--set", "train.steps=40"]


@pytest.mark.parametrize("codec", [[], ["--set", "uplink.codec=sign"]], ids=["fp32", "sign"])
def test_the_simulator_stops_at_the_first_non_finite_step(tmp_path, codec):
    out = tmp_path / "run"
    p = subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--quiet", "--out", str(out), *LR_1E6, *codec]
        + ["--set", "checkpoint.every=1"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("qtrain: error: diverged at step "), line
    step = int(line.split("diverged at step ")[1].split(":")[0])
    assert 1 < step < 40
    kept = sorted((out / "checkpoints").glob("step-*.h5"))
    assert kept, "the steps before divergence were checkpointed"
    for path in kept:  # every checkpoint written is finite and before the diverged step
        tree, _ = read_checkpoint(path)
        assert tree["step"] < step and bool(torch.isfinite(tree["params"]).all())
    assert not (out / "summary.json").exists()


@pytest.mark.mpi
def test_an_mpi_run_that_diverges_ends_every_rank_naming_the_step(tmp_path):
    p = mpi_train(3, "configs/sgd.yaml", tmp_path / "mpi", *LR_1E6[1::2], timeout=120)
    assert p.returncode != 0
    assert "diverged at step " in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("where", ["gradient", "error buffer"])
def test_a_non_finite_uplink_input_is_named_with_step_worker_and_segment(where):
    _, server, engines, replica = build(
        AlgorithmConfig(name="ecq-sgd"), LinkConfig(codec="uniform", bits=2), numel=2048, segments=2
    )
    grad = torch.ones(2048)
    engines[1].begin_step()
    first, seg = list(server.partition)
    if where == "gradient":
        grad[seg.slice][3] = float("nan")
    else:
        engines[1].error[seg.slice][5] = float("inf")
    engines[1].make_uplink(first, grad, replica)
    with pytest.raises(
        Diverged, match=r"diverged at step 1: worker 1's uplink input .* segment 1 has NaN or Inf"
    ):
        engines[1].make_uplink(seg, grad, replica)


def test_the_fp32_path_checks_the_sums_it_computes():
    _, server, engines, replica = build(AlgorithmConfig(name="sgd"), LinkConfig(codec="none"))
    engines[0].begin_step()
    grad = torch.ones(300)
    grad[7] = float("inf")
    with pytest.raises(Diverged, match="worker 0's uplink input"):
        engines[0].make_uplink(next(iter(server.partition)), grad, replica)
    huge = torch.full((300,), 3e19)  # a float32 norm overflows, the values are finite: no divergence
    engines[0].make_uplink(next(iter(server.partition)), huge, replica)


def test_an_fp16_overflow_names_the_codec_range_not_the_learning_rate():
    """fp16 gradients beyond 65504 were reported as "diverged ... (lower algorithm.lr?)" even at
    lr 1e-12 (issue 22)."""
    _, server, engines, replica = build(AlgorithmConfig(name="sgd", lr=1e-12), LinkConfig(codec="fp16"))
    engines[0].begin_step()
    grad = torch.ones(300)
    grad[7] = 1e5
    seg = next(iter(server.partition))
    with pytest.raises(OutOfRange) as info:
        engines[0].make_uplink(seg, grad, replica)
    assert str(info.value) == (
        "at step 1: worker 0's uplink input (gradient, rule and error feedback) in segment 0 overflows codec "
        "'fp16': the largest |gradient| is 1e+05 > 65504, the largest fp16 value (use codec bf16, which has "
        "float32's range, or scale the loss down)"
    )
    grad[7] = 6e4  # within fp16's range: no error
    engines[1].begin_step()
    engines[1].make_uplink(seg, grad, replica)


@pytest.mark.parametrize(
    "link", [LinkConfig(codec="sign"), LinkConfig(codec="uniform", norm="l2")], ids=["sign", "uniform-l2"]
)
def test_finite_inputs_whose_scale_overflows_say_overflow_not_nan(link):
    """Finite values near 3e38 gave "input has NaN or Inf" from sign and l2 uniform: a bucket's
    float32 sum or norm overflows. The message now says so; a real NaN is still a divergence."""
    _, server, engines, replica = build(AlgorithmConfig(name="sgd"), link)
    seg = next(iter(server.partition))
    grad = torch.full((300,), 3e38)
    engines[0].begin_step()
    with pytest.raises(
        OutOfRange, match=r"is finite but overflows float32 in codec '(sign|uniform)' .* 3e\+38"
    ):
        engines[0].make_uplink(seg, grad, replica)
    grad[3] = float("nan")
    engines[1].begin_step()
    with pytest.raises(Diverged, match="has NaN or Inf") as info:
        engines[1].make_uplink(seg, grad, replica)
    assert not isinstance(info.value, OutOfRange)


def test_no_checkpoint_with_non_finite_values_and_inspect_names_them(tmp_path, real_checkpoint):
    params = torch.ones(10)
    params[2] = float("nan")
    with pytest.raises(Diverged, match="checkpoint item /params holds 1 NaN or Inf"):
        require_finite(3, {"step": 3, "params": params, "server": {"m": torch.zeros(4)}})
    require_finite(3, {"step": 3, "params": torch.ones(10)})
    # a real run's checkpoint as an older qtrain might have written it: one NaN in /params
    tree, meta = read_checkpoint(real_checkpoint)
    tree["params"][2] = float("nan")
    meta["params_sha256"] = params_sha256(tree["params"])
    path = write_checkpoint(tmp_path / real_checkpoint.name, tree, meta)
    p = subprocess.run([*QTRAIN, "checkpoint", "inspect", str(path)], capture_output=True, text=True)
    assert p.returncode == 2
    n = tree["params"].numel()
    assert f"torch.float32 ({n},)  NON-FINITE: 1 NaN, 0 Inf" in p.stdout
    assert p.stderr.strip() == f"qtrain: error: {path}: non-finite values in /params"
