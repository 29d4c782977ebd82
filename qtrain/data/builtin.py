"""Datasets that ship with a dependency or are generated: digits and the synthetic problems."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from qtrain.data.base import Dataset, split
from qtrain.seeding import derive_seed


def digits_file() -> Path:
    """Where scikit-learn keeps its bundled digits (``sklearn/datasets/data/digits.csv.gz``), found
    without importing scikit-learn: ``import sklearn.datasets`` pulls in scipy.stats and pandas,
    about a second of start-up on every rank of every run."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("data.name=digits needs scikit-learn's bundled data: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise ValueError(f"data.name=digits: scikit-learn's digits file is missing ({path})")
    return path


def digits(cfg, seed: int) -> Dataset:
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes), pixels scaled to
    [0, 1], a fixed 80/20 split (independent of the run seed, so runs compare on one test set).
    Read from the same CSV that ``sklearn.datasets.load_digits`` reads: 64 pixel columns (0-16),
    then the label; tests/test_data_and_models.py checks the two agree exactly."""
    table = np.loadtxt(digits_file(), delimiter=",")
    x = torch.tensor(table[:, :-1].reshape(-1, 8, 8), dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(table[:, -1].astype(np.int64))
    return Dataset("digits", *split(x, y, cfg.test_fraction, 20260), "classification", 10)


def _least_squares_loss(x: torch.Tensor, y: torch.Tensor) -> float:
    """min over (w, b) of 0.5 * mean ||y - (x w + b)||^2, in float64."""
    a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    sol = torch.linalg.lstsq(a, y.double()).solution
    return float(0.5 * ((a @ sol - y.double()) ** 2).sum(dim=1).mean())


def synthetic_regression(cfg, seed: int) -> Dataset:
    """ECQ-SGD's Syn-d (Wu et al., ICML 2018, Sec. 5): x ~ N(0, I_d), w* ~ N(0, I_d),
    y = w*.x + noise * N(0, 1); ``samples`` training and ``samples * test_fraction`` test points.
    The loss is 0.5 * squared error; its exact training minimum is stored (least squares, float64)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "synthetic-regression"))
    n_test = max(1, int(round(cfg.samples * cfg.test_fraction)))
    w = torch.randn(cfg.features, 1, generator=gen)
    x = torch.randn(cfg.samples + n_test, cfg.features, generator=gen)
    y = x @ w + cfg.noise * torch.randn(len(x), 1, generator=gen)
    xtr, ytr, xte, yte = x[: cfg.samples], y[: cfg.samples], x[cfg.samples :], y[cfg.samples :]
    return Dataset(
        "synthetic-regression",
        xtr,
        ytr,
        xte,
        yte,
        "regression",
        1,
        _least_squares_loss(xtr, ytr),
        w.reshape(-1),
    )


def synthetic_sparse_logistic(cfg, seed: int) -> Dataset:
    """Sparse logistic regression with known ground truth: w* has ``density * features`` nonzero
    N(0, 4) entries, x ~ N(0, I), y ~ Bernoulli(sigmoid(w*.x)); two classes. The test problem of
    l1-regularized QCMD/QRDA (Xu et al., 2022)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "synthetic-sparse-logistic"))
    n_test = max(1, int(round(cfg.samples * cfg.test_fraction)))
    w = torch.zeros(cfg.features)
    nnz = max(1, int(round(cfg.density * cfg.features)))
    support = torch.randperm(cfg.features, generator=gen)[:nnz]
    w[support] = 2.0 * torch.randn(nnz, generator=gen)
    x = torch.randn(cfg.samples + n_test, cfg.features, generator=gen)
    y = (torch.rand(len(x), generator=gen) < torch.sigmoid(x @ w)).to(torch.int64)
    return Dataset(
        "synthetic-sparse-logistic",
        x[: cfg.samples],
        y[: cfg.samples],
        x[cfg.samples :],
        y[cfg.samples :],
        "classification",
        2,
        true_weights=w,
    )


def toy_convex(cfg, seed: int) -> Dataset:
    """A stochastic convex toy problem in the spirit of the example Efficient-Adam (Chen et al.,
    2022) and AMSGrad (Reddi et al., 2018) use: rare large gradients in one direction, frequent
    small ones in the other. Each sample is a target t in R^d with t = +C e (probability 1/C) or
    -e otherwise (C = 10, e the all-ones vector scaled by 1/sqrt(d)); the loss is
    0.5 * ||w - t||^2 with the model a linear map of the constant input 1 (``model.name=logreg``).
    The optimum is w = mean(t), whose training loss is stored; E[t] is close to 0, so methods
    that over-weight the frequent small gradients drift the wrong way."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "toy-convex"))
    c, d = 10.0, cfg.features
    n_test = max(1, int(round(cfg.samples * cfg.test_fraction)))
    n = cfg.samples + n_test
    rare = torch.rand(n, generator=gen) < 1.0 / c
    scale = torch.where(rare, torch.tensor(c), torch.tensor(-1.0)).unsqueeze(1)
    t = scale * torch.ones(1, d) / d**0.5
    x = torch.ones(n, 1)
    ttr = t[: cfg.samples]
    optimum = float(0.5 * ((ttr.double() - ttr.double().mean(0)) ** 2).sum(1).mean())
    return Dataset(
        "toy-convex", x[: cfg.samples], ttr, x[cfg.samples :], t[cfg.samples :], "regression", d, optimum
    )
