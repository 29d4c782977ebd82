"""examples/gpt: a nanoGPT-style character GPT on the King James Bible, as a DDP user writes it
(train_ddp.py, under torchrun) and its qtrain port (train.py, under mpiexec). With Adam, decoupled
weight decay, clipping and no compression the port is DDP's training: the server's evaluations
equal the twin's at every step where both evaluate."""

import difflib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import mpiexec_command

ROOT = Path(__file__).resolve().parent.parent
GPT = ROOT / "examples" / "gpt"
SMALL = [
    *("--n-layer", "1", "--n-head", "4", "--n-embd", "32", "--block-size", "32", "--batch-size", "4"),
    *("--max-iters", "20", "--eval-interval", "10", "--warmup-iters", "5"),
]
# Where both evaluate, |qtrain - DDP| / DDP stays below this. Measured on SMALL (torch 2.13 CPU):
# 3.0e-9 and 6.2e-9 at steps 10 and 20. Ports that are wrong are much further: no weight decay
# 3.3e-5 and 6.5e-5, each worker clipping its own gradient 3.7e-5 and 2.4e-5, no clipping 1.5e-4
# and 6.6e-4, an L2 penalty in place of decoupled decay 6.7e-3 and 8.0e-3.
REL = 1e-6
CHECKPOINTS = ["--set", "checkpoint.every=10", "--set", "checkpoint.keep=2"]

needs_bible = pytest.mark.skipif(
    shutil.which("bible") is None, reason="examples/gpt needs Debian's bible-kjv (make sysdeps as root)"
)


@pytest.fixture(scope="module")
def gpt():
    sys.path.insert(0, str(GPT))
    try:
        import data
        import model

        yield model, data
    finally:
        sys.path.remove(str(GPT))


def run_ddp(out_json: Path, *flags: str) -> list:
    """``torchrun --standalone --nproc_per_node 2 train_ddp.py FLAGS``: [[step, val_loss], ...]."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    p = subprocess.run(
        [*cmd, str(GPT / "train_ddp.py"), *flags, "--out-json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(out_json.read_text())


def run_qtrain(out: Path, *flags: str, ranks: int = 3) -> tuple[list, subprocess.CompletedProcess]:
    """``mpiexec -n 3 python train.py FLAGS --out OUT``: [[step, val_loss], ...] and the process."""
    out_json = out.parent / f"{out.name}.json"
    p = subprocess.run(
        [*mpiexec_command(), "-n", str(ranks), sys.executable, str(GPT / "train.py"), *flags]
        + ["--out", str(out), "--out-json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(out_json.read_text()), p


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    """train.py on SMALL with configs/adam.yaml, a checkpoint at steps 10 and 20."""
    out = tmp_path_factory.mktemp("gpt") / "adam"
    losses, p = run_qtrain(out, *SMALL, *CHECKPOINTS)
    return out, losses, p


def test_the_model_ties_its_head_and_decays_each_matrix_once(gpt):
    model, _ = gpt
    m = model.GPT(model.GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11))
    assert m.wte.weight is m.lm_head.weight
    decay, nodecay = m.optim_groups(0.1)
    assert (decay["weight_decay"], nodecay["weight_decay"]) == (0.1, 0.0)
    params = list(m.parameters())  # the tied weight once
    assert len(params) == len(decay["params"]) + len(nodecay["params"])
    assert {id(p) for p in params} == {id(p) for p in decay["params"] + nodecay["params"]}
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in nodecay["params"])
    logits, loss = m(torch.zeros(3, 16, dtype=torch.int64), torch.ones(3, 16, dtype=torch.int64))
    assert logits.shape == (3, 16, 11) and loss.ndim == 0


def test_the_data_are_seeded_windows_of_the_text(gpt):
    _, data = gpt
    d = data.CharData("abcab\n" * 100)
    assert d.chars == ["\n", "a", "b", "c"] and (len(d.train), len(d.val)) == (540, 60)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = d.get_batch("train", 5, 8, g1)
    assert torch.equal(x, d.get_batch("train", 5, 8, g2)[0])
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (5, 8)
    assert d.decode(x[0].tolist()) in "abcab\n" * 100


@needs_bible
@pytest.mark.mpi
def test_the_qtrain_port_trains_as_its_ddp_twin(tmp_path, adam_run):
    """Adam with decoupled decay, codec none, clipping of the workers' mean gradient: the server's
    validation losses equal DDP rank 0's at steps 10 and 20."""
    ddp = run_ddp(tmp_path / "ddp.json", *SMALL)
    _, ours, p = adam_run
    print("step  ddp  qtrain  relative difference")
    for (step, a), (_, b) in zip(ddp, ours, strict=True):
        print(step, a, b, abs(a - b) / a)
    assert [s for s, _ in ours] == [s for s, _ in ddp] == [10, 20]
    for (_, a), (_, b) in zip(ddp, ours, strict=True):
        assert abs(a - b) <= REL * a
    assert "step 20 val_loss" in p.stdout


@needs_bible
@pytest.mark.mpi
@pytest.mark.soak  # a smoke run (make soak): the warm-up's bits are held by test_warmup and test_mpi_train
def test_efficient_adam_trains_the_gpt(tmp_path):
    """configs/efficient-adam.yaml (1-bit both ways after uncompressed steps, here 10) runs the
    same script; its 10 compressed steps leave the loss falling."""
    config = str(GPT / "configs" / "efficient-adam.yaml")
    ours, _ = run_qtrain(
        tmp_path / "run", *SMALL, "--config", config, "--set", "algorithm.uncompressed_steps=10"
    )
    assert [s for s, _ in ours] == [10, 20]
    assert ours[1][1] < ours[0][1] < 4.29  # ln(73): the untrained model's loss


@needs_bible
@pytest.mark.mpi
def test_colocated_the_port_evaluates_and_trains_what_one_server_does(tmp_path, adam_run):
    """--set runtime.servers=colocated on 2 ranks (both train and serve; rank 0 evaluates through
    sess.optimizer(evaluate=...)): the separate server's validation losses and parameters."""
    out, losses, _ = adam_run
    ours, p = run_qtrain(tmp_path / "co", *SMALL, "--set", "runtime.servers=colocated", ranks=2)
    assert ours == losses
    summary = lambda d: json.loads((d / "summary.json").read_text())  # noqa: E731
    assert summary(tmp_path / "co")["params_sha256"] == summary(out)["params_sha256"]
    assert "step 20 val_loss" in p.stdout


@needs_bible
@pytest.mark.mpi
def test_a_resume_continues_the_batches(tmp_path, adam_run):
    """Resumed from step 10's checkpoint (the generator and the step in its extra state), the run
    ends with the uninterrupted run's parameters and evaluations."""
    out, losses, _ = adam_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    (copy / "checkpoints" / "step-0000020.h5").unlink()
    resumed, _ = run_qtrain(copy, *SMALL, *CHECKPOINTS, "--resume", "auto")
    assert resumed == losses
    summary = lambda d: json.loads((d / "summary.json").read_text())  # noqa: E731
    assert summary(copy)["params_sha256"] == summary(out)["params_sha256"]


def _block_after(marker: str, text: str) -> str:
    rest = text.split(f"<!-- {marker} -->", 1)[1]
    return rest.split("```", 2)[1].split("\n", 1)[1]


def test_the_walkthrough_diff_is_the_files():
    doc = (ROOT / "docs" / "library.md").read_text()
    before = (GPT / "train_ddp.py").read_text().splitlines()
    after = (GPT / "train.py").read_text().splitlines()
    diff = "\n".join(difflib.unified_diff(before, after, "train_ddp.py", "train.py", lineterm=""))
    assert _block_after("gpt-diff", doc) == diff + "\n"
