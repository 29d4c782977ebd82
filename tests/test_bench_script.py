"""``qtrain bench network --script``: the pieces that turn a user's script and its DDP twin into
time to a target loss (the twin's step clock and evaluation lines, the hooks' names, the target,
the qtrain trace's curve), its refusals, and one small real run on emulated links."""

import io
import json
import re
import sys

import numpy as np
import pytest
from test_bench_network import run_bench
from test_netem import namespaces, root  # noqa: F401 - the root fixture

from qtrain.bench.ddp_twin import DEFAULT_PATTERN, LineWatcher, StepClock, hook_spec
from qtrain.bench.script_bench import choose_target, parse_run, peer_hook_name, qtrain_curve, time_to_target

QTRAIN = [sys.executable, "-m", "qtrain"]


@pytest.mark.parametrize(
    "line, step, loss",
    [
        ("step 50 val_loss 2.5285", 50, 2.5285),
        ("step 250: train loss 1.2100, val loss 1.3012", 250, 1.3012),  # nanoGPT's line
        ("step 7 validation loss: 3e-1", 7, 0.3),
        ("step 3 val_loss nan", 3, float("nan")),
    ],
)
def test_the_default_pattern_reads_the_usual_evaluation_lines(line, step, loss):
    m = re.search(DEFAULT_PATTERN, line)
    assert int(m["step"]) == step and (float(m["loss"]) == loss or np.isnan(loss))


@pytest.mark.parametrize("line", ["iter 5: loss 2.3", "step 5 train_loss 2.3", "epoch 2 val_acc 0.9"])
def test_the_default_pattern_leaves_other_lines_alone(line):
    assert re.search(DEFAULT_PATTERN, line) is None


def test_the_step_clock_times_each_evaluation_at_its_steps_end_and_passes_output_through():
    """An evaluation line gets the time and bytes of the end of the step it names (the evaluation
    itself is not in its own time), measured from the end of step 1; lines split across writes
    are read whole, and everything reaches the real stream."""

    class Counters:
        rx_tx = [(100, 50), (160, 90), (300, 200)]

        def read(self):
            return self.rx_tx.pop(0)

    clock = StepClock(Counters())
    target = io.StringIO()
    out = LineWatcher(target, re.compile(DEFAULT_PATTERN), clock.evaluated)
    times = iter([10.0, 10.5, 11.25])
    import qtrain.bench.ddp_twin as twin

    real = twin.time.perf_counter
    twin.time.perf_counter = lambda: next(times)
    try:
        for _ in range(3):
            clock.step_ended()
    finally:
        twin.time.perf_counter = real
    out.write("hello\nstep 2 val")
    out.write("_loss 2.5\nstep 9 val_loss 1.0\n")  # step 9 never ran: not an evaluation of this run
    assert target.getvalue() == "hello\nstep 2 val_loss 2.5\nstep 9 val_loss 1.0\n"
    res = clock.result()
    assert res["step_end_s"] == [0.0, 0.5, 1.25]
    assert res["link_bytes"] == [0, 100, 350]  # rx + tx since the end of step 1
    assert res["evals"] == [{"step": 2, "wall_s": 0.5, "bytes": 100, "loss": 2.5}]
    assert res["unmatched_eval_steps"] == [9]


def test_hook_and_peer_names():
    assert hook_spec("none") == ("none", 0, 0) and hook_spec("fp16") == ("fp16", 0, 0)
    assert hook_spec("powersgd:4") == ("powersgd", 4, 10) and hook_spec("powersgd:2:30") == (
        "powersgd",
        2,
        30,
    )
    assert [peer_hook_name(p) for p in ("ddp", "ddp-fp16", "ddp-powersgd:4:30")] == [
        "none",
        "fp16",
        "powersgd:4:30",
    ]
    for bad in ("ddp-powersgd:0", "ddp-powersgd:4:1", "ddp-powersgd:x", "ddp-int8", "horovod"):
        with pytest.raises(ValueError, match="unknown peer"):
            peer_hook_name(bad)


def test_runs_are_named_or_left_to_be_named():
    assert parse_run("1bit=--config c.yaml --set a=b") == parse_run("1bit= --config c.yaml --set a=b")
    r = parse_run("1bit=--config 'my dir/c.yaml'")
    assert r.name == "1bit" and r.extra == ["--config", "my dir/c.yaml"]
    r = parse_run("--set uplink.bits=4")
    assert r.name is None and r.extra == ["--set", "uplink.bits=4"]
    assert parse_run("adam=").extra == [] and parse_run("").extra == []
    with pytest.raises(ValueError, match="a run's name"):
        parse_run("bad/name=--x")
    with pytest.raises(ValueError, match="No closing quotation"):
        parse_run("a='x")


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    evals = [{"step": 20, "wall_s": 4.0, "loss": 2.0}, {"step": 10, "wall_s": 2.0, "loss": 2.6}]
    assert time_to_target(evals, 2.6) == 2.0 and time_to_target(evals, 2.2) == 4.0
    assert time_to_target(evals, 2.0 * (1 - 1e-5)) == 4.0  # within the printed precision's tolerance
    assert time_to_target(evals, 1.9) is None and time_to_target(evals, None) is None


def test_the_default_target_is_the_plain_ddp_twins_final_loss():
    runs = [
        {"kind": "qtrain", "name": "q", "final_loss": 1.0},
        {"kind": "ddp", "hook": "fp16", "name": "ddp-fp16", "final_loss": 2.1},
        {"kind": "ddp", "hook": "none", "name": "ddp", "final_loss": 2.0},
    ]
    assert choose_target(runs, None) == (2.0, "ddp's final loss")
    assert choose_target(runs, 2.5) == (2.5, "--target")
    assert choose_target(runs[:2], None) == (2.1, "ddp-fp16's final loss")
    assert choose_target(runs[:1], None)[0] is None


def test_the_qtrain_curve_counts_time_and_bytes_from_the_end_of_step_1():
    """Two serving ranks: the lead's rows end the steps (an evaluation is stamped before it ran,
    as the twin's are), the bytes are the busier link's."""
    from qtrain.io.trace import EVAL_DTYPE, TRACE_DTYPE

    rows = np.zeros(8, dtype=TRACE_DTYPE)
    rows["step"] = [1, 2, 3, 4] * 2
    rows["rank"] = [0] * 4 + [1] * 4
    rows["wall_s"] = [1.0, 1.5, 2.5, 3.0, 1.1, 1.6, 2.6, 3.1]
    rows["wire_recv_bytes"] = [10, 10, 10, 10, 30, 30, 30, 30]
    rows["wire_sent_bytes"] = [5, 5, 5, 5, 1, 1, 1, 1]
    rows["compute_s"] = [0, 0, 0, 0.25, 0, 0, 0, 0]  # the lead's evaluation of step 4 took 0.25 s
    evals = np.zeros(2, dtype=EVAL_DTYPE)
    evals["step"], evals["test_loss"] = [4, 2], [1.5, 2.5]
    curve, link = qtrain_curve(rows, evals, [0, 1])
    assert curve == [
        {"step": 2, "wall_s": 0.5, "bytes": 31, "loss": 2.5},
        {"step": 4, "wall_s": 1.75, "bytes": 93, "loss": 1.5},  # stamped before its evaluation
    ]
    assert link["up"].tolist() == [30] * 4 and link["wall_s"].tolist() == [1.0, 1.5, 2.5, 3.0]


@pytest.mark.parametrize(
    "args, why",
    [
        (["--script", "nope.py"], "--script 'nope.py': no such file"),
        (["--script", "examples/gpt/train.py", "--peers", "ddp"], "--peers need --twin"),
        (["--script", "examples/gpt/train.py", "--twin", "examples/gpt/train_ddp.py", "--peers", "ddp-int8"],
         "unknown peer 'ddp-int8'"),
        (["--script", "examples/gpt/train.py", "--pattern", "step (\\d+)"], "needs the named groups"),
        (["--script", "examples/gpt/train.py", "--pattern", "(?P<step"], "--pattern '(?P<step'"),
        (["--script", "examples/gpt/train.py", "--run", "a=", "--run", "a=--x"], "its own name"),
        (["--script", "examples/gpt/train.py", "--twin", "examples/gpt/train_ddp.py", "--peers", "ddp,ddp"],
         "its own name"),
        (["--script", "examples/gpt/train.py", "--twin", "examples/gpt/train_ddp.py", "--peers",
          "ddp-powersgd:4:1"], "START >= 2"),
        (["--script", "examples/gpt/train.py", "--set", "a=1"], "--set and --target-accuracy go with config"),
        (["--script", "examples/gpt/train.py", "--steps", "5"], "--steps and --eval-every go with config"),
        (["configs/default.yaml", "--target", "2"], "--run, --twin, --target and --pattern go with --script"),
        ([], "give config files, or --script"),
    ],
)  # fmt: skip
def test_script_mode_refuses_in_one_line(tmp_path, args, why):
    from typer.testing import CliRunner

    from qtrain.cli.app import app

    r = CliRunner().invoke(app, ["bench", "network", *args, "--out", str(tmp_path)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and why in lines[0], r.output


@pytest.mark.netns
@pytest.mark.mpi
def test_a_script_and_its_ddp_twin_end_to_end(root, tmp_path):  # noqa: F811
    """examples/gpt (a tiny one) on qtrain and as its DDP twin under torchrun with PowerSGD, 2
    workers on 1 Gbit/s links: the fp32 qtrain run trains what DDP trains, so it reaches DDP's
    final loss; every run's curve, clock and bytes are in results.json, with the figure."""
    out = tmp_path / "bench"
    tiny = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--max-iters", "8",
            "--eval-interval", "4", "--warmup-iters", "2"]  # fmt: skip
    argv = [*QTRAIN, "bench", "network", "--bandwidth", "1gbit", "--workers", "2", "--warmup", "2",
            "--script", "examples/gpt/train.py", "--twin", "examples/gpt/train_ddp.py",
            "--peers", "ddp,ddp-powersgd:2:4", "--run", "fp32=", "--out", str(out), "--", *tiny]  # fmt: skip
    p, mine = run_bench(argv, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.png").stat().st_size > 10_000
    ddp, psgd, fp32 = res["runs"]
    assert [r["name"] for r in res["runs"]] == ["ddp", "ddp-powersgd:2:4", "fp32"]
    assert res["target"] == ddp["final_loss"] and res["target_from"] == "ddp's final loss"
    for r in res["runs"]:
        assert r["steps"] == 8 and [e["step"] for e in r["evals"]] == [4, 8]
        walls = [e["wall_s"] for e in r["evals"]]
        assert 0 < walls[0] < walls[1]
        assert 0 < r["evals"][0]["bytes"] < r["evals"][1]["bytes"]
    # DDP AdamW on qtrain: the same model at every evaluation, so it reaches the target at the end
    assert [e["loss"] for e in fp32["evals"]] == pytest.approx([e["loss"] for e in ddp["evals"]], abs=1e-4)
    assert fp32["time_to_target_s"] == fp32["evals"][-1]["wall_s"]
    assert fp32["label"] == "qtrain adam, up none, down none" and psgd["label"].startswith(
        "DDP + PowerSGD rank 2"
    )
    # PowerSGD rank 2 sends less than the plain all-reduce once it starts (iteration 4)
    assert psgd["bytes_per_step_busiest_link"]["up"] < ddp["bytes_per_step_busiest_link"]["up"] / 2
    table = p.stdout.splitlines()
    assert any(re.match(r"fp32\s+8\s", line) for line in table)
    assert not any(n.startswith(mine) for n in namespaces()), "the network was torn down"
