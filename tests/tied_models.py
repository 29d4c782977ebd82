"""Models with tied weights, written as a user would (``checkpoint export`` must write a tied
parameter under every name its ``state_dict`` has; tests/test_export_aliases.py)."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class TinyGPT(nn.Module):
    """nanoGPT's shape, shrunk: token and position embeddings, a LayerNorm and the output head,
    whose weight is the token embedding's (nanoGPT's ``self.transformer.wte.weight =
    self.lm_head.weight``: trained once as ``transformer.wte.weight``, saved under both names),
    and a persistent buffer that two submodules share (saved under both names too)."""

    def __init__(self, vocab: int = 16, block: int = 8, width: int = 8):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(wte=nn.Embedding(vocab, width), wpe=nn.Embedding(block, width), ln_f=nn.LayerNorm(width))
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        scale = torch.linspace(0.5, 1.5, width)
        self.transformer.ln_f.register_buffer("scale", scale)
        self.lm_head.register_buffer("scale", scale)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        return self.lm_head(self.transformer.ln_f(x) * self.lm_head.scale)

    def loss(self, idx):
        """Next-token cross-entropy of a (batch, block) token tensor."""
        logits = self(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


class TiedMLP(nn.Module):
    """An MLP whose middle layer is applied twice with one weight (two biases): ``again.weight``
    is ``block.weight``."""

    def __init__(self, inputs: int, outputs: int, hidden: int = 32):
        super().__init__()
        self.inp = nn.Linear(inputs, hidden)
        self.block = nn.Linear(hidden, hidden)
        self.again = nn.Linear(hidden, hidden)
        self.again.weight = self.block.weight
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
        x = torch.relu(self.inp(x.flatten(1)))
        return self.head(torch.relu(self.again(torch.relu(self.block(x)))))


def tied_mlp(input_shape, outputs):
    """``model.name: tied_models:tied_mlp``."""
    return TiedMLP(math.prod(input_shape), outputs)
