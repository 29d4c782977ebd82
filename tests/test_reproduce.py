"""Smoke versions of the paper reproductions (`qtrain reproduce NAME --quick`): the pipeline runs,
writes its table, results and plot, and the numbers are what the runs measured. The papers'
numbers are never asserted here: they are in docs/reproductions.md."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qtrain.config import load_config
from qtrain.data.idx import FASHION_MNIST_DIR
from qtrain.engine.simulator import simulate
from qtrain.reproduce import ecq_linear, qcmd_sparsity
from qtrain.reproduce.registry import REPRODUCTIONS

QTRAIN = [sys.executable, "-m", "qtrain"]


def test_the_observer_sees_every_step_and_the_final_weights():
    cfg = load_config("configs/sgd.yaml", ["train.steps=5", "train.eval_every=5"])
    seen = []
    summary = simulate(cfg, 2, None, log=lambda _: None, observe=lambda t, p, ds: seen.append((t, p.clone())))
    assert [t for t, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert not torch.equal(seen[0][1], seen[-1][1])
    from qtrain.io.run_dir import params_sha256

    assert params_sha256(seen[-1][1]) == summary["params_sha256"]


def test_metrics_against_hand_computed_values():
    class DS:
        x_train = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        y_train = torch.tensor([[1.0], [2.0]])
        true_weights = torch.tensor([1.0, 1.0])
        outputs = 2

    params = torch.tensor([0.5, 0.0, 0.25])  # w = (0.5, 0), b = 0.25
    # residuals: 0.75 - 1 = -0.25, 1.75 - 2 = -0.25
    assert ecq_linear.train_loss(params, DS) == pytest.approx(0.5 * 0.0625)
    assert ecq_linear.distance(params, DS) == pytest.approx((0.25 + 1.0) ** 0.5)
    two_class = torch.tensor([0.0, 1.0, 0.0, 2.0, 7.0, 7.0])  # 2 x 2 weights, then 2 biases
    assert qcmd_sparsity.density(two_class, DS) == 0.5


NEEDS = {  # reproductions on Debian data: what must be installed (make sysdeps as root)
    "efficient-adam": lambda: Path(FASHION_MNIST_DIR).is_dir(),
    "ecq-compression": lambda: Path(FASHION_MNIST_DIR).is_dir(),
    "efficient-adam-lm": lambda: shutil.which("bible") is not None,
}


# efficient-adam's quick run (50 s, the longest) goes to make soak: its data (fashion-mnist), its
# simulate runs and its table and plot code are ecq-compression's and the others' in make test
IN_SOAK = {"efficient-adam"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.soak] if n in IN_SOAK else []) for n in REPRODUCTIONS]
)
def test_quick_reproduction_writes_its_table_results_and_plot(tmp_path, name):
    if name in NEEDS and not NEEDS[name]():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run reproduction {name}: make sysdeps installs its Debian data")
        pytest.skip(f"reproduction {name} needs Debian data (make sysdeps as root)")
    p = subprocess.run(
        [*QTRAIN, "reproduce", name, "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    out = tmp_path / name
    results = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text().splitlines()
    runs = results["runs"]
    assert len(table) >= len(runs) + 2 and all(r["command"].startswith("qtrain simulate ") for r in runs)
    assert list(out.glob("*.png")) and all(png.stat().st_size > 10_000 for png in out.glob("*.png"))
    for r in runs:
        for curve in r["curves"].values():
            assert curve["steps"][0] == 0 and curve["steps"][-1] == results["settings"]["steps"]
            assert all(v is not None and v == v for v in curve["values"])  # measured: no NaN (null) values


def test_unknown_reproduction_is_one_line(tmp_path):
    p = subprocess.run(
        [*QTRAIN, "reproduce", "resnet-imagenet", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "qtrain: error: unknown reproduction 'resnet-imagenet'; choose from: all, " + ", ".join(REPRODUCTIONS)
    ]


@pytest.mark.soak
def test_side_by_side_reproductions_give_the_same_tables(tmp_path):
    """`--jobs 2` (what make reproduce uses) runs reproductions in parallel processes, each
    single-threaded: the tables are the same as one at a time (make soak)."""
    for jobs in ("1", "2"):
        p = subprocess.run(
            [
                *QTRAIN,
                "reproduce",
                "ecq-linear",
                "qadam",
                "--quick",
                "--jobs",
                jobs,
                "--out",
                str(tmp_path / jobs),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr
        assert "all 2 reproductions: " in p.stdout
    for name in ("ecq-linear", "qadam"):
        assert (tmp_path / "1" / name / "table.md").read_text() == (
            tmp_path / "2" / name / "table.md"
        ).read_text()
