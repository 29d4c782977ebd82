"""A small CNN with BatchNorm on your own Dataset, through qtrain: DataLoader (session.shard),
cosine LR schedule, gradient clipping, bf16 autocast, evaluation, checkpoints with your own
state, resume, and a clean stop on SIGTERM / Slurm preemption.

    mpiexec -n 3 qtrain run examples/bn_cnn.py -c configs/default.yaml -- --epochs 4
    mpiexec -n 3 qtrain run examples/bn_cnn.py -c configs/default.yaml --out OUT --resume auto

Clipping changes the gradient between backward() and step(), so the optimizer is created with
overlap=False (the whole gradient is sent at step())."""

from __future__ import annotations

import argparse

import torch
from digits_data import Digits, accuracy
from torch import nn
from torch.nn import functional as F

import qtrain


def make_model(running_stats: bool = True) -> nn.Module:
    def block(cin, cout):
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout, track_running_stats=running_stats),
            nn.ReLU(),
        ]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images (tiny runs)")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--no-running-stats", action="store_true", help="BatchNorm without running statistics")
    args = p.parse_args()

    sess = qtrain.session()  # `qtrain run` made it; in a plain script: qtrain.init(config)
    torch.manual_seed(1234 + sess.worker_index)  # differs per worker: the optimizer adopts worker 0's init
    model = make_model(not args.no_running_stats)
    opt = sess.optimizer(model, overlap=False)  # clipping below needs the whole gradient at step()
    train, test = Digits("train", args.limit), Digits("test")
    loader = sess.shard(train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(loader))
    if sess.resumed_extra is not None:
        sched.load_state_dict(sess.resumed_extra["scheduler"])

    for epoch in range(loader.epoch, args.epochs):
        for x, y in loader:
            x, y = x.to(sess.device), y.to(sess.device)
            opt.zero_grad()
            with torch.autocast(sess.device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            sess.log(loss=loss, lr=sched.get_last_lr()[0])
            if sess.checkpoint_due:  # checkpoint.every, or an agreed stop
                sess.checkpoint(extra={"scheduler": sched.state_dict()})
            if sess.should_stop:
                return
        sess.sync_buffers()  # BatchNorm statistics averaged over the workers before evaluating
        acc = accuracy(model, test, sess.device)
        sess.log(epoch=epoch, test_accuracy=acc)
        if sess.worker_index == 0:
            print(f"epoch {epoch}: step {sess.step}, test accuracy {acc:.4f}", flush=True)
    sess.checkpoint(extra={"scheduler": sched.state_dict()})


if __name__ == "__main__":
    main()
