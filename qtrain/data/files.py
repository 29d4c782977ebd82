"""Datasets read from user files: LIBSVM/svmlight, CIFAR-10 (binary or python release), .npz."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from qtrain.data.base import Dataset, regular_file, split
from qtrain.data.bounded import dense_bytes, npz_members, read_file
from qtrain.memory import MemoryBoundError, require_fits

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _need_path(cfg, what: str) -> Path:
    if not cfg.path:
        raise ValueError(f"data.name={cfg.name} needs data.path ({what})")
    path = Path(cfg.path).expanduser()
    if what == "a CIFAR-10 directory":
        if not path.exists():
            raise ValueError(f"data.path {str(path)!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"data.path {str(path)!r} is not a directory; data.name={cfg.name} reads {what}")
        return path
    if path.is_dir():
        raise ValueError(f"data.path {str(path)!r} is a directory; data.name={cfg.name} reads {what}")
    return regular_file(path)  # which says when it does not exist, in the same words


class Labels(NamedTuple):
    """What ``_labels`` makes of a file's labels: the targets, the task, the classes or targets
    per sample, the file's label of each class id (classification), and why the task is this one."""

    y: torch.Tensor
    task: str
    outputs: int
    class_labels: tuple | None
    reason: str


def _labels(y: np.ndarray, name: str, task: str = "auto") -> Labels:
    """``data.task`` for labels ``y`` (one row per sample): classification with ids 0..C-1, or
    regression with one float target per column. ``auto``: integer-valued labels in one column
    (integer or float dtype alike, as ``np.loadtxt`` and scikit-learn's svmlight parser give them)
    are classes, anything else is regression; every file loader decides with this one rule, and
    the plan line says which rule chose (``reason``), since float targets that happen to be whole
    numbers are read as classes too."""
    dtype = y.dtype
    y = y.astype(np.float64) if y.dtype == np.bool_ else y
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: labels contain NaN or Inf")
    column = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    integer = np.issubdtype(dtype, np.integer) or dtype == np.bool_
    whole = integer or bool(np.all(y == np.round(y)))
    reason = "by data.task"
    if task == "auto":
        task = "classification" if column and whole else "regression"
        if task == "regression":
            reason = f"by data.task auto ({'several label columns' if not column else 'non-integer labels'})"
        elif integer:
            reason = f"by data.task auto ({dtype} labels in one column)"
        else:
            reason = f"by data.task auto ({dtype} labels in one column, all whole numbers)"
    if task == "classification":
        if not (column and whole):
            why = "several columns" if not column else f"a non-integer value {y[y != np.round(y)][0]!r}"
            raise ValueError(f"{name}: data.task=classification, but the labels have {why}")
        flat = y.reshape(-1)
        classes = np.unique(flat)
        ids = np.searchsorted(classes, flat)
        labels = tuple(classes.tolist())
        return Labels(torch.from_numpy(ids.astype(np.int64)), "classification", len(classes), labels, reason)
    targets = torch.from_numpy(y.astype(np.float32)).reshape(len(y), -1)
    return Labels(targets, "regression", targets.shape[1], None, reason)


def libsvm(cfg, seed: int) -> Dataset:
    """LIBSVM/svmlight text files (``data.path``, optional ``data.test_path``), read with
    scikit-learn's parser and densified. Integer labels (e.g. -1/+1) become classes 0..C-1."""
    from sklearn.datasets import load_svmlight_file, load_svmlight_files

    path = _need_path(cfg, "an svmlight file")
    # the parser's sparse arrays: at most one (index, value) per 4 bytes of text, 12 bytes each
    require_fits(3 * path.stat().st_size, f"data.path {str(path)!r}")
    try:
        if cfg.test_path:
            test_path = regular_file(cfg.test_path, "data.test_path")
            require_fits(3 * test_path.stat().st_size, f"data.test_path {str(test_path)!r}")
            xtr, ytr, xte, yte = load_svmlight_files([str(path), str(test_path)])
        else:
            xtr, ytr = load_svmlight_file(str(path))
            xte = yte = None
    except OverflowError:  # scikit-learn's parser keeps feature indices in 32 bits
        raise ValueError(
            f"{path}: a feature index above 2147483647 (not a LIBSVM file of dense features)"
        ) from None
    except ValueError as exc:
        if "does not exist" in str(exc):
            raise
        raise ValueError(f"{path}: not a valid LIBSVM/svmlight file ({exc})") from exc
    for name, m in (("data.path", xtr), ("data.test_path", xte)):
        if m is not None:
            dense_bytes(*m.shape, f"{name} {str(cfg.path if m is xtr else cfg.test_path)!r}")
    x = torch.from_numpy(xtr.astype(np.float32).toarray())
    source = f"data.path {str(path)!r}"
    if xte is None:
        lab = _labels(ytr, cfg.name, cfg.task)
        parts = split(x, lab.y, cfg.test_fraction, 20260)
        return _dataset("libsvm", parts, lab, source)
    lab = _labels(np.concatenate([ytr, yte]), cfg.name, cfg.task)
    xt = torch.from_numpy(xte.astype(np.float32).toarray())
    return _dataset("libsvm", (x, lab.y[: len(ytr)], xt, lab.y[len(ytr) :]), lab, source)


def _dataset(name: str, parts: tuple, lab: Labels, source: str) -> Dataset:
    """A file loader's checked Dataset: ``parts`` (x_train, y_train, x_test, y_test), labelled by
    ``lab``, read from ``source`` (which a refusal names)."""
    ds = Dataset(name, *parts, lab.task, lab.outputs, source=source, task_reason=lab.reason)
    ds.class_labels = lab.class_labels
    return ds.check()


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 python release and nothing else: only numpy array reconstruction is
    allowed; any other global (os.system, builtins.eval, ...) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = read_file(path, "a CIFAR-10 file", copies_per_byte=6)[1]  # the float32 images too
        batch = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no data/labels entries)")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected uint8 data of shape (n, 3072) and n labels")
    return data, labels


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(read_file(path, "a CIFAR-10 file", copies_per_byte=6)[1], dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the 3073-byte CIFAR-10 record")
    rec = raw.reshape(-1, 3073)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} outside 0..9")
    return rec[:, 1:], labels


def cifar10(cfg, seed: int) -> Dataset:
    """CIFAR-10 (Krizhevsky, 2009) from ``data.path``: the binary release (``data_batch_{1..5}.bin``,
    ``test_batch.bin``) or the python release (``data_batch_{1..5}``, ``test_batch``), either in the
    directory itself or in its ``cifar-10-batches-bin``/``cifar-10-batches-py`` subdirectory.
    Images are normalized per channel with the usual CIFAR-10 mean and std."""
    root = _need_path(cfg, "a CIFAR-10 directory")
    for d in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if (d / "test_batch.bin").exists():
            names, reader = (
                [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"],
                _read_binary_batch,
            )
            break
        if (d / "test_batch").exists():
            names, reader = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], _read_python_batch
            break
    else:
        raise ValueError(f"{root}: no CIFAR-10 test_batch.bin or test_batch found")
    missing = [n for n in names if not (d / n).exists()]
    if missing:
        raise ValueError(f"{d}: CIFAR-10 files missing: {', '.join(missing)}")
    parts = [reader(regular_file(d / n, "a CIFAR-10 file")) for n in names]

    def tensor(data):
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    xtr = tensor(np.concatenate([p[0] for p in parts[:-1]]))
    ytr = torch.from_numpy(np.concatenate([p[1] for p in parts[:-1]]))
    return Dataset(
        "cifar10", xtr, ytr, tensor(parts[-1][0]), torch.from_numpy(parts[-1][1]), "classification", 10
    ).check()


def npz(cfg, seed: int) -> Dataset:
    """Arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` in a ``.npz`` file (no pickles).
    ``data.task`` decides classification (labels remapped to 0..C-1) or regression, by the rule of
    every file loader (``_labels``)."""
    path = _need_path(cfg, "an .npz file")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises OSError, ValueError, EOFError, BadZipFile, ... by case
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: a single .npy array, not an .npz archive of x_train, y_train, x_test, y_test"
        )
    try:
        with f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise ValueError(f"{path}: missing arrays {', '.join(missing)}")
            # the declared sizes, and the float32 copies of uint8 features, must fit first
            npz_members(f, path, ("x_train", "y_train", "x_test", "y_test"), copies=5.0)
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except MemoryBoundError:
        raise
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for k in ("x_train", "x_test"):
        if not np.issubdtype(arrays[k].dtype, np.number) or arrays[k].ndim < 2:
            raise ValueError(f"{path}: {k} must be a numeric array of shape (n, features...)")
    for k in ("y_train", "y_test"):
        if not (np.issubdtype(arrays[k].dtype, np.number) or arrays[k].dtype == np.bool_):
            raise ValueError(f"{path}: {k} must be numeric labels, got dtype {arrays[k].dtype}")
        if np.issubdtype(arrays[k].dtype, np.floating) and not np.all(np.isfinite(arrays[k])):
            raise ValueError(f"{path}: {k} contains NaN or Inf")
    ytr, yte = arrays["y_train"], arrays["y_test"]
    xtr = torch.from_numpy(arrays["x_train"].astype(np.float32))
    xte = torch.from_numpy(arrays["x_test"].astype(np.float32))
    targets = ytr.shape[1:] or (1,)
    if targets != (yte.shape[1:] or (1,)):
        raise ValueError(f"{path}: y_train and y_test have different numbers of targets")
    ytr, yte = ytr.reshape((len(ytr), *targets)), yte.reshape((len(yte), *targets))
    common = np.result_type(ytr.dtype, yte.dtype)
    lab = _labels(np.concatenate([ytr.astype(common), yte.astype(common)]), str(path), cfg.task)
    parts = (xtr, lab.y[: len(ytr)], xte, lab.y[len(ytr) :])
    return _dataset("npz", parts, lab, f"data.path {str(path)!r}")
