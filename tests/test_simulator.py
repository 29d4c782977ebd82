"""End-to-end simulator runs: determinism, convergence to a known optimum, EF ablation."""

import json

import pytest
from conftest import SUMMARY_KEYS

from qtrain.config import load_config
from qtrain.engine.simulator import simulate

SYN = [
    "data.name=synthetic-regression",
    "model.name=logreg",
    "data.features=20",
    "data.samples=2000",
    "train.steps=300",
    "data.batch_size=32",
    "train.eval_every=100",
]
LR = {
    "sgd": 0.05,
    "adam": 0.02,
    "ecq-sgd": 0.05,
    "qadam": 0.02,
    "efficient-adam": 0.02,
    "qcmd-adagrad": 0.5,
    "qrda-adagrad": 0.5,
}
QUIET = {"log": lambda _: None}


def run(config, overrides, workers=4, out=None):
    return simulate(load_config(config, overrides), workers, out, **QUIET)


def test_same_seed_same_params_and_different_seed_differs(tmp_path):
    a = run("configs/default.yaml", ["train.steps=40"], 2, tmp_path / "a")
    b = run("configs/default.yaml", ["train.steps=40"], 2, tmp_path / "b")
    c = run("configs/default.yaml", ["train.steps=40", "seed=1"], 2)
    assert a["params_sha256"] == b["params_sha256"] != c["params_sha256"]
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert saved["params_sha256"] == a["params_sha256"]


@pytest.mark.parametrize("name", list(LR))
def test_every_algorithm_converges_on_synthetic_regression(name):
    """Measured when this test was written: final/optimum between 1.001 and 1.034 for every
    algorithm (300 steps, 4 workers, Syn-d with d=20). Bound: within 10% of the optimum."""
    s = run(f"configs/{name}.yaml", [*SYN, f"algorithm.lr={LR[name]}"])
    assert s["final_train_loss"] <= 1.10 * s["optimum_train_loss"], (
        s["final_train_loss"] / s["optimum_train_loss"]
    )


def test_one_bit_sign_without_error_feedback_does_measurably_worse():
    """Efficient-Adam, sign both ways: measured 1.001x the optimum with EF, 192x without."""
    with_ef = run("configs/efficient-adam.yaml", [*SYN, "algorithm.lr=0.02"])
    without = run(
        "configs/efficient-adam.yaml",
        [*SYN, "algorithm.lr=0.02", "uplink.error_feedback=false", "downlink.error_feedback=false"],
    )
    assert with_ef["final_train_loss"] <= 1.10 * with_ef["optimum_train_loss"]
    assert without["final_train_loss"] >= 10 * with_ef["final_train_loss"]
    assert with_ef["bytes_up"] == without["bytes_up"], "same communication budget"


def test_summary_fields_and_byte_accounting(tmp_path):
    s = run("configs/default.yaml", ["train.steps=10"], 2, tmp_path)
    for key in SUMMARY_KEYS:
        assert key in s
    from qtrain.codecs import get_codec

    per_msg = get_codec("sign").wire_bytes(s["numel"])
    assert s["bytes_up"] == 10 * 2 * per_msg and s["bytes_down"] == 10 * 2 * per_msg
    assert s["bytes_fp32_equivalent"] == 2 * 10 * 2 * get_codec("none").wire_bytes(s["numel"])
    assert (tmp_path / "config.yaml").exists()


def test_resolved_config_reproduces_the_run(tmp_path):
    first = run("configs/ecq-sgd.yaml", ["train.steps=15"], 2, tmp_path / "first")
    again = run(str(tmp_path / "first" / "config.yaml"), [], 2)
    assert again["params_sha256"] == first["params_sha256"]


def test_qadam_weight_quantization_sends_quantized_weights(tmp_path):
    s = run(
        "configs/qadam.yaml",
        ["train.steps=30", "algorithm.weight_quantization=true"],
        2,
    )
    assert s["downlink"]["codec"] == "uniform" and s["downlink"]["rounding"] == "nearest"
    assert s["downlink"]["mode"] == "weights"
    assert s["compression_down"] > 3.5  # 8-bit weights
    assert s["final_test_accuracy"] > 0.5


def test_epochs_set_the_step_count():
    s = run("configs/default.yaml", ["train.steps=null", "train.epochs=1", "data.batch_size=100"], 2)
    assert s["steps"] == (1438 // 2) // 100


@pytest.mark.parametrize("name, l1, lr", [("qcmd-adagrad", 0.03, 0.1), ("qrda-adagrad", 0.01, 0.5)])
def test_sparse_l1_models_really_are_sparse(name, l1, lr):
    """Measured: qcmd (l1 0.03) 0.912 accuracy with a 1.64x smaller downlink than dense fp32;
    qrda (l1 0.01) 0.935 with 4.43x (RDA gives the sparser model, as Xu et al. and Duchi et al. note)."""
    s = run(
        f"configs/{name}.yaml",
        [
            "data.name=synthetic-sparse-logistic",
            "model.name=logreg",
            "data.samples=2000",
            f"algorithm.l1={l1}",
            f"algorithm.lr={lr}",
            "train.steps=200",
        ],
    )
    assert s["compression_down"] > 1.4, "the sparse model downlink must be smaller than dense fp32"
    assert s["final_test_accuracy"] > 0.85


def test_simulator_writes_the_same_trace_and_checkpoints_as_a_real_run(tmp_path):
    import h5py

    from qtrain.io.checkpoint import read_checkpoint

    s = run(
        "configs/default.yaml", ["train.steps=25", "checkpoint.every=10", "train.eval_every=10"], 3, tmp_path
    )
    with h5py.File(tmp_path / "trace.h5", "r") as f:
        steps = f["steps"][()]
        assert len(f["evals"]) == 3 and f.attrs["workers"] == 3
    assert len(steps) == 25 * 4 and int(steps[steps["role"] == 0]["bytes_recv"].sum()) == s["bytes_up"]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000010.h5", "step-0000020.h5", "step-0000025.h5"]
    tree, meta = read_checkpoint(tmp_path / "checkpoints" / "step-0000025.h5")
    assert meta["params_sha256"] == s["params_sha256"] and sorted(tree["workers"]) == ["1", "2", "3"]
