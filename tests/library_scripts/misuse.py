"""Library misuse, one MODE per launch, as a plain script on every rank:
``mpiexec -n 3 python misuse.py MODE``. Each mode must end the job with one line that names
the culprit (tests/test_library_mpi.py)."""

import sys

import torch
from torch import nn
from torch.nn import functional as F

import qtrain

mode = sys.argv[1]
sets = ["train.log_every=1000", "runtime.timeout_s=30"]
if mode == "mean_clip_with_overlap":
    sets.append("algorithm.name=adam")  # its rule runs on the serving rank: there the mean is clipped
if mode == "clip_with_an_unused_parameter":
    sets.append("runtime.segments=2")  # the used head's segment goes out from the hooks
if mode == "too_many_servers":
    sets.append("runtime.servers=2")  # the 67 parameters fit one 512-element bucket: one segment
sess = qtrain.init(None, sets, sys.argv[2])


def model(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def batch():
    return torch.randn(8, 4), torch.randint(0, 3, (8,))


def train(opt, net, steps):
    for _ in range(steps):
        x, y = batch()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


if mode == "serve_on_worker":
    sess.serve()
if mode == "optimizer_on_server":
    sess.optimizer(model())
if sess.is_server:
    if mode != "server_never_serves":
        sess.serve()
    raise SystemExit(0)
if mode == "models_differ":
    net = model(9 if sess.worker_index == 1 else 8)
elif mode == "clip_with_an_unused_parameter":
    net = model(256)
    net.append(nn.Linear(3, 3))  # never called: its segment waits for step(), the others go out
else:
    net = model()
if mode == "groups_differ":  # worker 1 puts the biases in a group of their own, worker 0 does not
    biases = [p for p in net.parameters() if p.dim() == 1]
    rest = [p for p in net.parameters() if p.dim() > 1]
    groups = (
        [{"params": rest}, {"params": biases, "lr": 0.5}]
        if sess.worker_index
        else [{"params": rest + biases}]
    )
    opt = sess.optimizer(groups, model=net)
else:
    opt = sess.optimizer(net, overlap=mode.startswith("clip_with") or mode == "mean_clip_with_overlap")
if mode == "never_steps":
    raise SystemExit(0)
if mode == "step_without_backward":
    opt.zero_grad()
    opt.step()
if mode == "reshaped":
    train(opt, net, 2)
    net[2].weight = nn.Parameter(torch.zeros(5, 8))
    net[2].bias = nn.Parameter(torch.zeros(5))
    train(opt, net, 1)
if mode == "mean_clip_with_overlap":  # the serving ranks clip the mean: they need the norm first
    x, y = batch()
    F.cross_entropy(net(x), y).backward()
    opt.clip_grad_norm_(1.0)
if mode.startswith("clip_with"):
    x, y = batch()
    F.cross_entropy(net[:3](x), y).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
    opt.step()
if mode == "unequal_steps":
    train(opt, net, 4 + sess.worker_index)
train(opt, net, 3)
