"""The in-memory dataset every loader returns."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # float32, (n, *input_shape)
    y_train: torch.Tensor  # int64 class ids (classification) or float32 (n, outputs) (regression)
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str  # "classification" | "regression" | "language-model" (per-token classification)
    outputs: int  # classes, or regression targets per sample
    optimum_train_loss: float | None = None  # known minimum of the training loss, where there is one
    true_weights: torch.Tensor | None = None  # synthetic datasets: the generating w* (features,)
    # files whose task ``data.task`` decides (libsvm, npz): the file as the user named it, how the
    # task was chosen ("by data.task auto (...)": the plan line says it), and each class id's label
    source: str = ""
    task_reason: str = ""
    class_labels: tuple | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe_task(self) -> str:
        """The task, with how ``data.task`` chose it where it did (the plan line's words:
        ``classification by data.task auto (float64 labels in one column, all whole numbers)``)."""
        return f"{self.task} {self.task_reason}" if self.task_reason else self.task

    def check(self) -> Dataset:
        """Consistency checks every loader's output passes (clear errors for malformed files)."""
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset {self.name}: features and labels have different lengths")
        if len(self.x_train) == 0:
            raise ValueError(f"dataset {self.name}: the training split is empty")
        if len(self.x_test) == 0:  # every evaluation would report accuracy 0.0
            raise ValueError(f"dataset {self.name}: the test split is empty")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"dataset {self.name}: train and test features have different shapes")
        if not torch.isfinite(self.x_train).all() or not torch.isfinite(self.x_test).all():
            raise ValueError(f"dataset {self.name}: features contain NaN or Inf")
        for y in (self.y_train, self.y_test):
            if y.is_floating_point() and not torch.isfinite(y).all():
                raise ValueError(f"dataset {self.name}: labels contain NaN or Inf")
        if self.task in ("classification", "language-model"):
            for y in (self.y_train, self.y_test):
                if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.outputs):
                    raise ValueError(f"dataset {self.name}: a label is outside 0..{self.outputs - 1}")
        if self.task == "classification" and int(self.y_train.min()) == int(self.y_train.max()):
            self._refuse_one_class()
        return self

    def _refuse_one_class(self) -> None:
        """A training split of one class cannot teach a classifier anything: with one output the
        softmax is 1 whatever the model, so the loss is 0 and the accuracy 1 from the first step
        and the run reported success having trained nothing (an npz of all-zero float regression
        targets, read as classes by ``data.task: auto``)."""
        cls = int(self.y_train[0])
        label = self.class_labels[cls] if self.class_labels is not None else cls
        where = self.source or f"dataset {self.name}"
        hint = "; set data.task: regression if these are regression targets" if self.task_reason else ""
        raise ValueError(
            f"{where}: every training label is {label!r} (one class), read as {self.describe_task()}: "
            f"a classifier of one class cannot learn{hint}"
        )


def split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int):
    """A deterministic random train/test split."""
    n = len(x)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def regular_file(path, key: str = "data.path") -> Path:
    """``path`` when it is a regular file (after symlinks); else ValueError naming ``key``: a FIFO,
    a socket or a device would block the reader forever or stream without end (``/dev/zero``)."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{key} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{key} {str(path)!r}: cannot read it ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return path
    kind = "a directory" if stat.S_ISDIR(mode) else _special_kind(mode)
    raise ValueError(f"{key} {str(path)!r} is {kind}, not a regular file")


def _special_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
    ):
        if test(mode):
            return kind
    return "a block device" if stat.S_ISBLK(mode) else "a special file"
