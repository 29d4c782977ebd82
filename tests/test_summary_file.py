"""summary.json is read without trust (``io/summary_file.py``): every malformed file is one line
that names the file and the item, and ``qtrain compare`` exits 2 with it instead of a traceback.
Before: bad JSON, a list, missing keys, a null loss and binary gave 5 tracebacks out of 5."""

import json
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
