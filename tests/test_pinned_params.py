"""Numerics that must not drift: the final ``params_sha256`` of short simulator runs, pinned.

Refactors of the engine, the codecs or the drivers must leave every one of these unchanged (the MPI
runs equal the simulator, tested elsewhere, so these pin them too). The values were recorded with
the torch version and CPU kernel family stored beside them in ``golden/params_sha256.json``; on
another torch or CPU capability float reductions may round differently, so the test is skipped
there rather than failing for a reason that is not a regression. Regenerate only for a change
whose numerics are meant to differ: ``python tests/test_pinned_params.py --write``.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "params_sha256.json"
SHORT = ["train.steps=30", "train.eval_every=10"]
CASES = {
    "default-600": ("configs/default.yaml", [], 2),
    "sgd": ("configs/sgd.yaml", SHORT, 2),
    "adam": ("configs/adam.yaml", SHORT, 2),
    "ecq-sgd": ("configs/ecq-sgd.yaml", SHORT, 2),
    "qadam": ("configs/qadam.yaml", SHORT, 2),
    "qadam-weights": ("configs/qadam.yaml", [*SHORT, "algorithm.weight_quantization=true"], 2),
    "efficient-adam": ("configs/efficient-adam.yaml", SHORT, 3),
    "efficient-adam-uniform4": (
        "configs/efficient-adam.yaml",
        [*SHORT, "uplink.codec=uniform", "uplink.bits=4", "downlink.codec=ternary"],
        3,
    ),
    "qcmd-adagrad": ("configs/qcmd-adagrad.yaml", [*SHORT, "algorithm.l1=0.01"], 2),
    "qrda-adagrad": ("configs/qrda-adagrad.yaml", SHORT, 2),
    "sgd-topk-ef": (
        "configs/sgd.yaml",
        [
            *SHORT,
            "uplink.codec=topk",
            "uplink.ratio=0.05",
            "uplink.error_feedback=true",
            "downlink.codec=fp16",
        ],
        2,
    ),
    "adam-bf16-threshold-dense": (
        "configs/adam.yaml",
        [*SHORT, "uplink.codec=threshold", "uplink.layout=dense", "downlink.codec=bf16"],
        2,
    ),
}


def environment() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def final_sha(name: str) -> str:
    from qtrain.config import load_config
    from qtrain.engine.simulator import simulate

    config, overrides, workers = CASES[name]
    return simulate(load_config(config, overrides), workers, None, log=lambda _: None)["params_sha256"]


@pytest.mark.parametrize("name", list(CASES))
def test_final_parameters_are_unchanged(name):
    golden = json.loads(GOLDEN.read_text())
    if golden["environment"] != environment():
        pytest.skip(f"pinned under {golden['environment']}, this is {environment()}")
    assert final_sha(name) == golden["params_sha256"][name]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    values = {name: final_sha(name) for name in CASES}
    GOLDEN.write_text(json.dumps({"environment": environment(), "params_sha256": values}, indent=2) + "\n")
    print(json.dumps(values, indent=2))
