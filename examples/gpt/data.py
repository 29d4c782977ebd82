"""The GPT example's data: the King James Bible, one character per token, offline.

The text is what Debian's ``bible-kjv`` prints (``bible -f Genesis1:1-Revelation22:21``: one verse
per line after its reference, 4.4 million characters, 73 distinct; the same text as the
language-model reproduction of docs/reproductions.md, here whole). The vocabulary is the text's
distinct characters, sorted; the first 90% of the text trains, the last 10% validates. Batches
are random windows drawn with the caller's ``torch.Generator``, as nanoGPT's ``get_batch`` draws
them, so a run with the same seed sees the same batches. Nothing here is qtrain's.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import torch

KJV = ["bible", "-f", "Genesis1:1-Revelation22:21"]


def kjv_text() -> str:
    if shutil.which("bible") is None:
        raise SystemExit("examples/gpt needs Debian's bible-kjv (apt-get install bible-kjv)")
    return subprocess.run(KJV, capture_output=True, text=True, check=True).stdout


class CharData:
    """``text`` (default: the KJV) as token ids, split 90/10 into ``train`` and ``val``."""

    def __init__(self, text: str | None = None):
        text = kjv_text() if text is None else text
        self.chars = sorted(set(text))
        self.vocab_size = len(self.chars)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        lookup = np.zeros(max(map(ord, self.chars)) + 1, dtype=np.int64)
        lookup[[ord(c) for c in self.chars]] = np.arange(self.vocab_size)
        ids = torch.from_numpy(lookup[codes])
        n = int(0.9 * len(ids))
        self.train, self.val = ids[:n], ids[n:]
        self._eval_sets: dict = {}

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def get_batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator):
        """``batch_size`` random windows of ``split``: inputs (B, T) and the next characters (B, T)."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block_size] for i in starts.tolist()])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts.tolist()])
        return x, y

    @torch.no_grad()
    def val_loss(
        self, model, block_size: int, batches: int = 20, batch_size: int = 16, seed: int = 1234
    ) -> float:
        """The mean loss over a fixed set of validation windows (``batches`` batches drawn with a
        generator seeded ``seed``): the same windows at every evaluation and in every run."""
        key = (block_size, batches, batch_size, seed)
        if key not in self._eval_sets:
            g = torch.Generator().manual_seed(seed)
            self._eval_sets[key] = [self.get_batch("val", batch_size, block_size, g) for _ in range(batches)]
        was_training = model.training
        model.eval()
        losses = [model(x, y)[1].item() for x, y in self._eval_sets[key]]
        model.train(was_training)
        return sum(losses) / len(losses)
