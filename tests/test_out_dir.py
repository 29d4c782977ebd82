"""Reused output directories (issue #14 item 5): another run's files are never overwritten or pruned
without being asked, and --overwrite says what it removes."""

import json
import subprocess
import sys

import pytest
from mpi_helpers import mpi_train

from qtrain.io.checkpoint import checkpoint_name, list_checkpoints, prune

QTRAIN = [sys.executable, "-m", "qtrain"]
SHORT = ["--set", "train.steps=20", "--set", "checkpoint.every=10"]


def simulate(out, *extra):
    return subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--quiet", "--out", str(out), *SHORT, *extra],
        capture_output=True,
        text=True,
    )


def test_a_directory_holding_another_run_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "run"
    assert simulate(out).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    p = simulate(out, "--set", "algorithm.lr=0.2")
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(
        f"qtrain: error: --out '{out}' holds another run (config.yaml, summary.json, trace.h5"
    )
    assert "2 checkpoints (step-0000010.h5, step-0000020.h5)" in line and "--overwrite" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_removes_exactly_the_run_files_and_says_so(tmp_path):
    out = tmp_path / "run"
    assert simulate(out).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "checkpoints" / "keep-me.txt").write_text("mine too\n")
    stale = out / "checkpoints" / checkpoint_name(600)
    stale.write_bytes((out / "checkpoints" / checkpoint_name(20)).read_bytes())
    aside = out / "trace-before-resume-at-step-3.h5"  # a trace a resume with other ranks set aside
    aside.write_bytes((out / "trace.h5").read_bytes())
    p = subprocess.run(
        [*QTRAIN, "simulate", "configs/sgd.yaml", "--out", str(out), *SHORT, "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert (
        "--overwrite: removed config.yaml, summary.json, trace.h5, trace-before-resume-at-step-3.h5, "
        "3 checkpoints" in p.stdout
    ), p.stdout
    assert not aside.exists()
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "checkpoints" / "keep-me.txt").exists()
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [20, 10]  # step 600 is gone
    assert json.loads((out / "summary.json").read_text())["steps"] == 20


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = simulate(f)
    assert p.returncode == 2 and p.stderr.strip() == f"qtrain: error: --out '{f}' is a file, not a directory"


def test_prune_touches_only_the_checkpoints_it_is_given(tmp_path):
    for step in (100, 200, 400, 500, 600):
        (tmp_path / checkpoint_name(step)).write_bytes(b"x")
    mine = {100, 200, 400}
    prune(tmp_path, 2, lambda s: s in mine)  # a run that resumed at 400 of a branch that went on to 600
    assert [s for s, _ in list_checkpoints(tmp_path)] == [600, 500, 400, 200]


@pytest.mark.mpi
def test_a_checkpoint_from_elsewhere_does_not_continue_the_run_in_out(tmp_path):
    """--resume FILE continues OUT's run only when FILE is one of OUT's checkpoints: another run's
    checkpoint resumed into a used OUT once mixed the two runs' config, trace and checkpoints."""
    from qtrain.io.run_dir import continues_run_in, prepare_out_dir

    out = tmp_path / "run"
    assert simulate(out).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    own = out / "checkpoints" / "step-0000010.h5"
    elsewhere = tmp_path / "other" / "checkpoints" / "step-0000010.h5"
    assert continues_run_in(out, "auto") and continues_run_in(out, True) and continues_run_in(out, str(own))
    assert not continues_run_in(out, str(elsewhere)) and not continues_run_in(out, None)
    assert prepare_out_dir(out, "auto") == (out, "") and prepare_out_dir(out, str(own)) == (out, "")
    with pytest.raises(ValueError) as refused:
        prepare_out_dir(out, str(elsewhere))
    assert "holds another run (config.yaml, summary.json, trace.h5" in str(refused.value)
    assert f"--resume '{elsewhere}' is not one of its checkpoints" in str(refused.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    _, removed = prepare_out_dir(out, str(elsewhere), overwrite=True)
    assert "2 checkpoints" in removed and not list(out.rglob("*.h5"))


def test_a_failed_start_is_not_offered_a_resume(tmp_path):
    """A start that failed (e.g. --resume auto into a new directory) leaves its config and rank
    logs; the next run is refused, but not told to --resume auto what has no checkpoint."""
    from qtrain.io.run_dir import prepare_out_dir

    out = tmp_path / "failed"
    (out / "logs").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "logs" / "rank-0.log").write_text("qtrain: error: no checkpoints\n")
    with pytest.raises(ValueError) as refused:
        prepare_out_dir(out)
    assert (
        "holds another run (config.yaml, 1 rank logs): it has no checkpoint to resume: pass --overwrite"
        in str(refused.value)
    )


def test_mpi_train_refuses_a_used_directory_unless_resuming(tmp_path):
    out = tmp_path / "mpi"
    sets = ["train.steps=20", "checkpoint.every=10"]
    assert mpi_train(3, "configs/sgd.yaml", out, *sets).returncode == 0
    p = mpi_train(3, "configs/sgd.yaml", out, *sets)
    assert p.returncode == 2 and f"--out '{out}' holds another run" in p.stderr
    assert p.stderr.count("holds another run") == 1  # rank 0 speaks for all
    p = mpi_train(
        3, "configs/sgd.yaml", out, "train.steps=30", "checkpoint.every=10", extra=["--resume", "auto"]
    )
    assert p.returncode == 0, p.stderr
    # a checkpoint from elsewhere and --overwrite: the same functions, tested in process above
