"""Character-level language-modelling data from any UTF-8 text file.

The text's distinct characters, sorted, are the vocabulary; the text becomes token ids and is cut
into windows of ``data.context`` characters: input ``ids[i*T : (i+1)*T]``, target the same window
shifted by one character. The last ``data.test_fraction`` of the windows, a contiguous stretch of
the text, is the test split (no window of it is trained on).
"""

from __future__ import annotations

import torch

from qtrain.data.base import Dataset
from qtrain.data.bounded import read_file

LANGUAGE_MODEL = "language-model"


def text(cfg, seed: int) -> Dataset:
    if not cfg.path:
        raise ValueError("data.name=text needs data.path (a UTF-8 text file)")
    # the bytes, the str, a list of ids and the int64 tensor: about 24 bytes per byte of text
    path, raw = read_file(cfg.path, "data.path", copies_per_byte=24)
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
        ) from exc
    t = cfg.context
    windows = (len(content) - 1) // t
    n_test = max(1, int(round(windows * cfg.test_fraction)))
    if windows - n_test < 1:
        raise ValueError(
            f"{path}: {len(content)} characters make {windows} windows of data.context={t}: too few "
            "for a training and a test split"
        )
    vocab = sorted(set(content))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in content[: windows * t + 1]], dtype=torch.int64)
    x = ids[: windows * t].view(windows, t)
    y = ids[1 : windows * t + 1].view(windows, t)
    cut = windows - n_test
    return Dataset(f"text:{path.name}", x[:cut], y[:cut], x[cut:], y[cut:], LANGUAGE_MODEL, len(vocab))
