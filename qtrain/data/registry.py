"""Dataset names users type."""

from __future__ import annotations

from qtrain.data import builtin, files, idx, text
from qtrain.data.base import Dataset

DATASETS = {
    "digits": builtin.digits,
    "synthetic-regression": builtin.synthetic_regression,
    "synthetic-sparse-logistic": builtin.synthetic_sparse_logistic,
    "toy-convex": builtin.toy_convex,
    "libsvm": files.libsvm,
    "cifar10": files.cifar10,
    "npz": files.npz,
    "idx": idx.idx_images,
    "fashion-mnist": idx.fashion_mnist,
    "text": text.text,
}


def load_dataset(cfg, seed: int) -> Dataset:
    """Load ``cfg.name`` (the ``data`` config section). Raises ValueError with a clear message."""
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[cfg.name](cfg, seed).check()
