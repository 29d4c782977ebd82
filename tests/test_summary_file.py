"""summary.json is read without trust (``io/summary_file.py``): every malformed file is one line
that names the file and the item, and ``qtrain compare`` exits 2 with it instead of a traceback.
Before: bad JSON, a list, missing keys, a null loss and binary gave 5 tracebacks out of 5."""

import json
import math
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from qtrain.cli.app import app
from qtrain.io.summary_file import MAX_SUMMARY_BYTES, SummaryError, read_summary


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "default"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "qtrain",
            "simulate",
            "default",
            "--set",
            "train.steps=4",
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    return out


def compare(*dirs):
    result = CliRunner().invoke(app, ["compare", *map(str, dirs)])
    return result.exit_code, result.output


def test_a_real_summary_is_read_and_compared(real_run):
    summary = read_summary(real_run / "summary.json")
    assert summary["steps"] == 4 and summary["uplink"]["codec"] == "sign"
    code, output = compare(real_run, real_run)
    assert code == 0 and output.count("efficient-adam") == 2


def corrupt(real_run, tmp_path, name, edit):
    run = tmp_path / name
    run.mkdir()
    summary = json.loads((real_run / "summary.json").read_text())
    content = edit(summary)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (run / "summary.json").write_bytes(data)
    return run


CASES = {
    "bad-json": (lambda s: b'{"algorithm": ', "not valid JSON"),
    "a-list": (lambda s: [s], "a JSON list, not the object a run writes"),
    "no-workers": (lambda s: {k: v for k, v in s.items() if k != "workers"}, "no 'workers'"),
    "binary": (lambda s: b"\x89HDF\r\n\x1a\n\xff\xfe", "not UTF-8 text"),
    "string-bytes": (lambda s: {**s, "bytes_up": "12"}, "'bytes_up' is '12', not a non-negative integer"),
    "float-steps": (lambda s: {**s, "steps": 15.7}, "'steps' is 15.7, not a non-negative integer"),
    "no-codec": (lambda s: {**s, "uplink": 3}, "'uplink' is 3, not a link with a codec name"),
    "bad-eval": (lambda s: {**s, "evals": [{"step": "x"}]}, "evals[0] is not an evaluation"),
    "deep": (lambda s: b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_malformed_summary_is_one_line_naming_the_file_and_the_item(real_run, tmp_path, name):
    edit, message = CASES[name]
    run = corrupt(real_run, tmp_path, name, edit)
    with pytest.raises(SummaryError, match="summary.json: ") as info:
        read_summary(run / "summary.json")
    assert message in str(info.value) and "\n" not in str(info.value)
    code, output = compare(real_run, run)
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and str(run) in lines[0], output


def test_a_null_loss_is_shown_as_missing(real_run, tmp_path):
    run = corrupt(real_run, tmp_path, "null", lambda s: {**s, "final_test_loss": None})
    code, output = compare(real_run, run)
    assert code == 0 and "Traceback" not in output
    assert output.splitlines()[-1].split()[5] == "-"  # the loss column


def test_what_is_not_a_regular_file_or_too_big_is_refused(real_run, tmp_path):
    fifo_run = tmp_path / "fifo"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "summary.json")  # reading it would block forever
    with pytest.raises(SummaryError, match="not a regular file"):
        read_summary(fifo_run / "summary.json")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_SUMMARY_BYTES + 1)
    with pytest.raises(SummaryError, match="more than a summary's"):
        read_summary(big)


def refuse_constant(word):
    raise ValueError(f"not JSON: {word}")


def test_summary_json_is_strict_json_with_null_for_a_missing_loss(real_run, tmp_path):
    """Issue 35: a run whose loss was never reported wrote ``"final_batch_loss": NaN``, which
    strict parsers (jq, JSON.parse, serde_json) refuse; non-finite numbers are now null, and
    qtrain reads the file as before."""
    from qtrain.io.run_dir import write_summary

    summary = json.loads((real_run / "summary.json").read_text())
    summary |= {"final_batch_loss": float("nan"), "final_test_loss": float("inf")}
    summary["evals"] = [{"step": 4, "test_loss": float("-inf"), "test_accuracy": 0.5}]
    run = tmp_path / "strict"
    run.mkdir()
    write_summary(run, summary)
    text = (run / "summary.json").read_text()
    strict = json.loads(text, parse_constant=refuse_constant)
    assert strict["final_batch_loss"] is None and strict["final_test_loss"] is None
    assert strict["evals"] == [{"step": 4, "test_loss": None, "test_accuracy": 0.5}]
    assert strict["final_test_accuracy"] == summary["final_test_accuracy"]  # finite numbers stay
    assert read_summary(run / "summary.json")["final_test_loss"] is None
    code, output = compare(real_run, run)
    assert code == 0 and output.splitlines()[-1].split()[5] == "-", output


def test_a_summary_written_before_with_a_bare_nan_is_still_read(real_run, tmp_path):
    run = corrupt(real_run, tmp_path, "old", lambda s: {**s, "final_test_loss": float("nan")})
    assert "NaN" in (run / "summary.json").read_text()  # what json.dumps wrote before
    assert math.isnan(read_summary(run / "summary.json")["final_test_loss"])
    code, output = compare(real_run, run)
    assert code == 0 and output.splitlines()[-1].split()[5] == "nan", output
    result = CliRunner().invoke(app, ["compare", "--json", str(run)])
    assert result.exit_code == 0
    assert json.loads(result.output, parse_constant=refuse_constant)[0]["test_loss"] is None


def test_strict_json_maps_every_non_finite_float_and_refuses_what_slips_past():
    from qtrain.io import strict_json

    value = {"a": [1.0, float("nan"), (float("inf"), -float("inf"))], "b": {"c": 2}, "d": "NaN", "e": None}
    assert json.loads(strict_json.dumps(value), parse_constant=refuse_constant) == {
        "a": [1.0, None, [None, None]],
        "b": {"c": 2},
        "d": "NaN",
        "e": None,
    }
    assert value["a"][1] != value["a"][1]  # the caller's data is not changed
    with pytest.raises(ValueError, match="Out of range float"):
        strict_json.dumps({"x": object()}, default=lambda o: float("nan"))


def test_the_final_table_shows_a_test_loss_without_a_train_loss():
    """serve(model, evaluate) without evaluate_train: the summary has a test loss and no train
    loss; the table printed at the end shows the one it has (it raised TypeError)."""
    from qtrain.cli.report import print_summary

    lines = []
    s = {
        "algorithm": "adam",
        "workers": 2,
        "steps": 3,
        "final_test_loss": 2.5,
        "final_train_loss": None,
        "bytes_up": 1e6,
        "bytes_down": 1e6,
        "compression_up": 1.0,
        "compression_down": 1.0,
        "wall_seconds": 1.0,
        "params_sha256": "ab" * 32,
    }
    print_summary(s, "OUT", echo=lines.append)
    assert "test loss      2.50000" in lines
    assert not [line for line in lines if line.startswith("train loss")]
