"""Your model, your data, your loop: `mpiexec -n 3 python examples/quickstart.py` (rank 0 serves)."""

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import qtrain

config = Path(__file__).parent / "configs" / "digits.yaml"
sess = qtrain.init(config, ["checkpoint.every=0"], out="runs/quickstart", overwrite=True)
if sess.is_server:
    sess.serve()  # until every worker's loop has ended: trace, summary.json
    raise SystemExit

d = load_digits()
data = TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(sess.device)
opt = sess.optimizer(model)  # 1-bit Efficient-Adam both ways, error feedback (the config)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
loader = sess.shard(data)  # this worker's share; its position is checkpointed

while sess.step < 200 and not sess.should_stop:
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x.to(sess.device)), y.to(sess.device))
        opt.backward(loss)  # loss.backward(), and the loss goes to the trace
        opt.step()  # the gradient goes out compressed, the server's update comes back
        sched.step()
        sess.log(loss=loss, lr=sched.get_last_lr()[0])
        if sess.step == 200 or sess.should_stop:
            break
sess.checkpoint(extra={"scheduler": sched.state_dict()})
