"""Small models: multinomial logistic regression, MLP, LeNet-style CNN."""

from __future__ import annotations

import math

from torch import nn


def logreg(input_shape: tuple[int, ...], outputs: int, **_) -> nn.Module:
    """Multinomial logistic regression (linear regression for regression tasks): one linear layer.
    The l1 penalty of QCMD/QRDA lives in the server rule, not in the model."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), outputs))


def mlp(input_shape: tuple[int, ...], outputs: int, hidden: list[int] | None = None, **_) -> nn.Module:
    """Fully connected ReLU network with the given hidden widths (``[]``: no hidden layer, a linear
    model; ``None``: one layer of 64)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in [64] if hidden is None else hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def lenet(input_shape: tuple[int, ...], outputs: int, **_) -> nn.Module:
    """LeNet-5 style CNN (LeCun et al., 1998): two 5x5 conv + ReLU + 2x2 max-pool blocks (6 and 16
    channels, 'same' padding so small images such as 8x8 digits fit), then 120-84-outputs."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet needs image input (channels, height, width), got shape {input_shape}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ValueError(f"lenet needs images of at least 4x4, got {h}x{w}")
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = 16 * (h // 2 // 2) * (w // 2 // 2)
    return nn.Sequential(
        features, nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, outputs)
    )
