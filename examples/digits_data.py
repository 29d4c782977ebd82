"""The examples' data: scikit-learn's bundled 8x8 digits (offline, 1797 images), as the user's
own torch Dataset. Nothing here is qtrain's: any map-style Dataset works the same way."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Digits(Dataset):
    """Images (1, 8, 8) scaled to [0, 1] and their labels; ``split``: the first 1437 images
    ("train") or the rest ("test"); ``limit`` keeps the first N of the split (tiny test runs)."""

    def __init__(self, split: str = "train", limit: int | None = None):
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(data.target, dtype=torch.int64)
        cut = 1437
        self.x, self.y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
        if limit is not None:
            self.x, self.y = self.x[:limit], self.y[:limit]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@torch.no_grad()
def accuracy(model, dataset, device) -> float:
    model.eval()
    x, y = dataset.x.to(device), dataset.y.to(device)
    out = model(x)
    if isinstance(out, tuple):
        out = out[0]
    model.train()
    return float((out.argmax(dim=1) == y).float().mean())
