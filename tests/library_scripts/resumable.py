"""A library script with everything a resume must bring back: dropout (the global torch RNG),
BatchNorm (buffers), a warm-up + cosine LR schedule (the param group's lr, the scheduler's state), the
shard's mid-epoch position and a counter of the script's own, saved as extra state.

    qtrain run resumable.py -- --steps N --report DIR [--pause-at K]

Checkpoints where session.checkpoint_due says (checkpoint.every, or an agreed stop). At the end,
or on an agreed stop, each worker writes DIR/worker-I.json: the steps done, the counter, the
scheduler's state and the learning rate. With --pause-at K, worker 0 writes DIR/paused (its pid)
after step K and waits for DIR/go, so a test can signal it at a known step."""

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import qtrain

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, required=True)
p.add_argument("--report", required=True)
p.add_argument("--pause-at", type=int, default=0)
args = p.parse_args()
report = Path(args.report)

sess = qtrain.session()
from sklearn.datasets import load_digits  # noqa: E402

d = load_digits()
data = TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target))
torch.manual_seed(1000 + sess.worker_index)  # each worker its own dropout stream (the init is worker 0's)
model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
opt = sess.optimizer(model)
loader = sess.shard(data, batch_size=16)
warm = 30  # a linear warm-up, then cosine: a resume inside the warm-up must restore the lr itself
sched = torch.optim.lr_scheduler.SequentialLR(
    opt,
    [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps - warm),
    ],
    milestones=[warm],
)
counter = 0
if sess.resumed_extra is not None:
    sched.load_state_dict(sess.resumed_extra["scheduler"])
    counter = sess.resumed_extra["counter"]


def write_report(stopped: bool) -> None:
    out = {
        "steps": sess.step,
        "counter": counter,
        "scheduler": sched.state_dict(),
        "lr": opt.param_groups[0]["lr"],
        "stopped": stopped,
        "epoch": loader.epoch,
        "position": loader.position,
    }
    (report / f"worker-{sess.worker_index}.json").write_text(json.dumps(out, sort_keys=True))


model.train()
while sess.step < args.steps:
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        sched.step()
        counter += int(y.sum())
        sess.log(loss=loss)
        if sess.checkpoint_due:
            sess.checkpoint(extra={"scheduler": sched.state_dict(), "counter": counter})
        if sess.should_stop:
            write_report(True)
            raise SystemExit(0)
        if args.pause_at and sess.step == args.pause_at and sess.worker_index == 0:
            (report / "paused").write_text(str(__import__("os").getpid()))
            while not (report / "go").exists():
                time.sleep(0.05)
        if sess.step == args.steps:
            break
write_report(False)
