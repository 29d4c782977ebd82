"""``train_ddp.py`` converted to qtrain (the "after"): ``mpiexec -n 3 python train_qtrain.py``
(rank 0 serves, ranks 1-2 train). docs/library.md shows the diff."""

import argparse
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

import qtrain

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from digits_data import Digits, accuracy  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args()

    sess = qtrain.init(None, [f"algorithm.lr={args.lr}"])  # the algorithm, codecs: a config file or --set
    if sess.is_server:
        sess.serve()  # rank 0 serves until the workers are done
        return
    device = sess.device
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    opt = sess.optimizer(model)  # the configured algorithm (default: 1-bit Efficient-Adam)
    train = Digits("train")
    loader = sess.shard(train, batch_size=32, shuffle=True)

    for epoch in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        if sess.worker_index == 0:
            print(f"epoch {epoch}: test accuracy {accuracy(model, Digits('test'), device):.4f}")


if __name__ == "__main__":
    main()
