"""nanoGPT's recipe as a library script: two param groups (decay / no decay), AdamW's decoupled
decay (algorithm.decoupled_weight_decay, set by the test), clipping of the mean gradient (at 0.25
here, where it acts), a learning rate the loop sets in every group before each step, and backward
through a GradScaler.

    qtrain run recipe.py -- --steps N --report DIR [--stop-at K] [--reference]

Worker w's batch of step t is drawn from a generator seeded with (t, w), so a resumed run sees the
batches the uninterrupted one saw. With --reference every worker also runs DDP's step in torch:
the mean of every worker's gradient, clip_grad_norm_, torch.optim.AdamW with the same groups, and
records after every step how far qtrain's parameters are from it. Worker 0 writes DIR/report.json:
the losses, the clipped norms, the reference distances and the final parameters."""

import argparse
import copy
import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import qtrain

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, required=True)
p.add_argument("--report", required=True)
p.add_argument("--stop-at", type=int, default=0)
p.add_argument("--reference", action="store_true")
args = p.parse_args()

sess = qtrain.session()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 4))


def groups_of(m):
    params = [p for p in m.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def get_lr(it):  # nanoGPT's get_lr: linear warm-up, cosine decay to min_lr
    warmup, min_lr, top = 3, 0.002, 0.02
    if it < warmup:
        return top * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / max(1, args.steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (top - min_lr)


def batch(step, worker):
    g = torch.Generator().manual_seed(7919 * step + worker)
    return torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)


opt = sess.optimizer(groups_of(model), model=model, betas=(0.9, 0.99), overlap=False)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
if args.reference:
    ref = copy.deepcopy(model)  # the agreed initial weights
    ref_opt = torch.optim.AdamW(groups_of(ref), lr=0.02, betas=(0.9, 0.99))
losses, norms, distance = [], [], []
while sess.step < args.steps:
    it = sess.step  # steps done: the loop's own iteration counter, restored by a resume
    lr = get_lr(it)
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = batch(it + 1, sess.worker_index)
    loss = F.cross_entropy(model(x), y)
    opt.backward(scaler.scale(loss))  # the trace gets the unscaled loss
    scaler.unscale_(opt)  # a power of two: unscaling is exact, so DDP's step below needs no scaler
    norm = opt.clip_grad_norm_(0.25)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    losses.append(float(loss))
    norms.append(float(norm))
    if args.reference:
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.zero_grad()
        for w in range(sess.num_workers):
            xw, yw = batch(it + 1, w)
            (F.cross_entropy(ref(xw), yw) / sess.num_workers).backward()
        expected = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.25))
        ref_opt.step()
        gap = max(
            float((a - b).abs().max() / (b.abs().max() + 1e-12))
            for a, b in zip(model.parameters(), ref.parameters(), strict=True)
        )
        distance.append({"relative": gap, "norm": float(norm), "torch_norm": expected})
    if sess.checkpoint_due or sess.step == args.stop_at:
        sess.checkpoint()
    if sess.step == args.stop_at:
        break
if sess.worker_index == 0:
    report = {
        "losses": losses,
        "norms": norms,
        "distance": distance,
        "lrs": [g["lr"] for g in opt.param_groups],
        "params": [p.detach().flatten().tolist() for p in model.parameters()],
    }
    Path(args.report, "report.json").write_text(json.dumps(report))
