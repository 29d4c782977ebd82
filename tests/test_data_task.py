"""How ``data.task: auto`` reads a file's labels, and what it refuses (issue #37): float targets
that happen to be whole numbers are read as classes (the documented rule, as ``np.loadtxt`` and
scikit-learn's svmlight parser give class labels as floats), so the plan line says which rule chose
the task; a classification whose training split holds one class cannot learn anything, and once
trained nothing with loss 0.0000, accuracy 1.0000 and exit 0: it is refused, naming the file."""

import subprocess
import sys

import numpy as np
import pytest

from qtrain.config import load_config
from qtrain.config.schema import DataConfig
from qtrain.data import load_dataset
from qtrain.engine.simulator import simulate


def _npz(path, y_train, y_test, **config) -> DataConfig:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.normal(size=(len(y_train), 4)),
        y_train=np.asarray(y_train),
        x_test=rng.normal(size=(len(y_test), 4)),
        y_test=np.asarray(y_test),
    )
    return DataConfig(name="npz", path=str(path), **config)


def test_all_zero_float_targets_are_refused_naming_the_file_the_label_and_the_rule(tmp_path):
    """The issue's file: regression targets that are all 0.0 became one class."""
    cfg = _npz(tmp_path / "zeros.npz", np.zeros(30), np.zeros(10))
    with pytest.raises(ValueError) as caught:
        load_dataset(cfg, seed=0)
    assert str(caught.value) == (
        f"data.path '{tmp_path / 'zeros.npz'}': every training label is 0.0 (one class), read as "
        "classification by data.task auto (float64 labels in one column, all whole numbers): a classifier "
        "of one class cannot learn; set data.task: regression if these are regression targets"
    )
    ds = load_dataset(_npz(tmp_path / "zeros.npz", np.zeros(30), np.zeros(10), task="regression"), seed=0)
    assert (ds.task, ds.outputs) == ("regression", 1)


def test_one_training_class_is_refused_whatever_the_test_split_and_the_loader(tmp_path):
    """The training split decides: a second class seen only in the test split cannot be learnt.
    Integer labels and a forced data.task are refused the same way; libsvm files too."""
    cfg = _npz(tmp_path / "a.npz", np.full(30, 7), np.arange(10) % 2 + 7, task="classification")
    with pytest.raises(
        ValueError,
        match=r"a.npz': every training label is 7 \(one class\), read as "
        r"classification by data.task: a classifier of one class cannot learn",
    ):
        load_dataset(cfg, seed=0)
    svm = tmp_path / "a.svm"
    svm.write_text("".join(f"+1 1:{i * 0.1}\n" for i in range(20)))
    with pytest.raises(
        ValueError,
        match=r"a.svm': every training label is 1.0 \(one class\), read as "
        r"classification by data.task auto \(float64 labels in one column, all whole numbers\)",
    ):
        load_dataset(DataConfig(name="libsvm", path=str(svm)), seed=0)
    two = load_dataset(_npz(tmp_path / "b.npz", np.arange(30) % 2 + 7, np.arange(10) % 2 + 7), seed=0)
    assert (two.task, two.outputs, two.class_labels) == ("classification", 2, (7, 8))


def test_the_plan_line_says_how_data_task_chose(tmp_path):
    """Float whole numbers, integer dtypes, non-integer floats and a forced task, as the simulator's
    plan line prints them (``qtrain train`` prints the same words in its data line)."""
    whole = np.arange(40) % 3 * 1.0
    cases = [
        (whole, "auto", "classification by data.task auto (float64 labels in one column, all whole numbers)"),
        (
            np.arange(40, dtype=np.int32) % 3,
            "auto",
            "classification by data.task auto (int32 labels in one column)",
        ),
        (np.arange(40) * 0.5 + 0.25, "auto", "regression by data.task auto (non-integer labels)"),
        (whole, "regression", "regression by data.task"),
    ]
    for i, (labels, task, words) in enumerate(cases):
        data = _npz(tmp_path / f"{i}.npz", labels[:30], labels[30:])
        sets = ["data.name=npz", f"data.path={data.path}", f"data.task={task}", "data.batch_size=8"]
        cfg = load_config("configs/default.yaml", [*sets, "model.name=mlp", "train.steps=1"])
        lines = []
        simulate(cfg, 2, None, log=lines.append)
        plan = next(line for line in lines if line.startswith("simulate: "))
        assert f"data npz ({words}, 30 train samples)" in plan, plan


def test_qtrain_simulate_refuses_the_one_class_file_in_one_line(tmp_path):
    cfg = _npz(tmp_path / "zeros.npz", np.zeros(30), np.zeros(10))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "qtrain",
            "simulate",
            "configs/default.yaml",
            "--set",
            "data.name=npz",
            "--set",
            f"data.path={cfg.path}",
            "--set",
            "model.name=mlp",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(
        f"qtrain: error: data.path '{cfg.path}': every training label is 0.0 (one class)"
    )
    assert not (tmp_path / "o" / "summary.json").exists()
