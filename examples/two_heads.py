"""Your own loss: a two-headed model (the digit, and whether it is even) trained on a weighted sum
of two losses, with gradient accumulation over micro-batches, through qtrain.

    mpiexec -n 3 qtrain run examples/two_heads.py -c examples/configs/digits.yaml -- --accumulate 2

Overlap stays on (each segment is sent from backward's hooks as it completes): the micro-batches
before the last one run inside ``optimizer.no_sync()``, so only the step's last backward sends."""

from __future__ import annotations

import argparse

import torch
from digits_data import Digits, accuracy
from torch import nn
from torch.nn import functional as F

import qtrain


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.digit = nn.Linear(64, 10)
        self.even = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return self.digit(h), self.even(h).squeeze(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    p.add_argument("--even-weight", type=float, default=0.5)
    args = p.parse_args()

    sess = qtrain.session()
    torch.manual_seed(0)  # a reproducible run (the workers adopt worker 0's initial weights anyway)
    model = TwoHeads()
    opt = sess.optimizer(model)  # overlap from runtime.overlap (on for CPU workers)
    loader = sess.shard(Digits("train"), batch_size=16)  # micro-batches of 16
    test = Digits("test")

    def loss_of(x, y):
        digit, even = model(x)
        return F.cross_entropy(digit, y) + args.even_weight * F.binary_cross_entropy_with_logits(
            even, (y % 2 == 0).float()
        )

    for epoch in range(loader.epoch, args.epochs):
        batches = iter(loader)
        for first in batches:
            micro = [first] + [b for _, b in zip(range(args.accumulate - 1), batches, strict=False)]
            opt.zero_grad()
            with opt.no_sync():
                for x, y in micro[:-1]:
                    (loss_of(x, y) / len(micro)).backward()
            x, y = micro[-1]
            loss = loss_of(x, y) / len(micro)
            opt.backward(loss)
            opt.step()
            if sess.should_stop:
                return
        acc = accuracy(model, test, sess.device)
        sess.log(test_accuracy=acc)
        if sess.worker_index == 0:
            print(f"epoch {epoch}: step {sess.step}, test accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
