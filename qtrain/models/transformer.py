"""A small decoder-only transformer for character-level language modelling (the GPT shape of
Radford et al. 2018/2019: token + learned position embeddings, pre-LayerNorm blocks of causal
multi-head self-attention and a 4x MLP with GELU, a final LayerNorm and a linear head).

``model.hidden`` gives one block per entry, all of the same width (e.g. [128, 128]: two blocks of
width 128); 4 attention heads. Input: token ids (N, T); output: logits (N, vocabulary, T), the
layout ``F.cross_entropy`` takes for per-token targets (N, T).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

HEADS = 4


class Block(nn.Module):
    def __init__(self, width: int, context: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=2)
        q, k, v = (z.view(n, t, HEADS, w // HEADS).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(w // HEADS)
        att = F.softmax(att.masked_fill(~self.mask[:t, :t], float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, t, w)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocabulary: int, context: int, width: int, blocks: int):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, context) for _ in range(blocks)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))
        return self.head(self.ln(self.blocks(x))).transpose(1, 2)


def transformer(
    input_shape: tuple[int, ...], outputs: int, hidden: list[int] | None = None, **_
) -> nn.Module:
    """``input_shape`` = (context,), ``outputs`` = vocabulary size."""
    widths = [128, 128] if hidden is None else hidden
    if not widths:
        raise ValueError("transformer: model.hidden is empty; give one width per block, e.g. [128, 128]")
    if len(input_shape) != 1:
        raise ValueError(
            f"transformer: needs token sequences (a text dataset), got inputs of shape {input_shape}"
        )
    if len(set(widths)) != 1 or widths[0] % HEADS:
        raise ValueError(
            f"transformer: model.hidden must repeat one width divisible by {HEADS}, got {widths}"
        )
    return CharTransformer(outputs, input_shape[0], widths[0], len(widths))
