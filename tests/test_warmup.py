"""The uncompressed warm-up (``algorithm.uncompressed_steps``, engine/link_plan.py): the first W
steps are the algorithm with codec ``none`` both ways and no error feedback, bit for bit; the
trace's bytes show the switch; then the configured codecs run with fresh error feedback. MPI ==
simulator with a warm-up is in test_mpi_train and test_mpi_servers, resume across the switch in
test_resume_in_process."""

import h5py
import pytest

from qtrain.config import load_config
from qtrain.engine.simulator import simulate

W = 3


def _run(tmp_path, name, *sets):
    cfg = load_config("configs/efficient-adam.yaml", ["train.eval_every=100", *sets])
    return simulate(cfg, 2, tmp_path / name, log=lambda _: None)


def test_the_warm_up_steps_are_the_algorithm_without_compression(tmp_path):
    warm = _run(tmp_path, "warm", f"train.steps={W}", f"algorithm.uncompressed_steps={W}")
    plain = _run(
        tmp_path,
        "plain",
        f"train.steps={W}",
        "uplink.codec=none",
        "downlink.codec=none",
        "uplink.error_feedback=false",
        "downlink.error_feedback=false",
    )
    assert warm["params_sha256"] == plain["params_sha256"]
    one_bit = _run(tmp_path, "one-bit", f"train.steps={W}")
    assert one_bit["params_sha256"] != warm["params_sha256"]  # so the comparison above has teeth


def test_the_trace_shows_the_switch_and_the_codecs_take_over(tmp_path):
    steps = 2 * W + 2
    _run(tmp_path, "warm", f"train.steps={steps}", f"algorithm.uncompressed_steps={W}")
    _run(tmp_path, "fp32", f"train.steps={steps}", "uplink.codec=none", "downlink.codec=none")
    _run(tmp_path, "one-bit", f"train.steps={steps}")

    def sent(name, role):
        with h5py.File(tmp_path / name / "trace.h5") as f:
            rows = f["steps"][:]
        rows = rows[rows["role"] == role]
        return [int(rows[rows["step"] == s]["bytes_sent"].sum()) for s in range(1, steps + 1)]

    for role in (0, 1):  # the server's downlinks, the workers' uplinks
        warm, fp32, one_bit = sent("warm", role), sent("fp32", role), sent("one-bit", role)
        assert warm[:W] == fp32[:W]
        assert warm[W:] == one_bit[W:]
        assert one_bit[0] * 20 < fp32[0]


def test_the_plan_line_says_where_the_switch_happens(tmp_path):
    lines = []
    cfg = load_config("configs/efficient-adam.yaml", ["train.steps=5", "algorithm.uncompressed_steps=2"])
    simulate(cfg, 2, None, log=lines.append)
    assert "steps 1-2 uncompressed, the codecs from step 3" in lines[0]


@pytest.mark.parametrize("value", ["-1", "1.5"])
def test_a_bad_warm_up_is_refused(value):
    from qtrain.config.loader import ConfigError

    with pytest.raises(ConfigError, match="algorithm.uncompressed_steps"):
        load_config(None, [f"algorithm.uncompressed_steps={value}"])
