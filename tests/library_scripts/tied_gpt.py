"""A script that configures itself (``qtrain.init`` with arguments, as under ``mpiexec python``)
and trains a nanoGPT-shaped model whose output head is tied to its token embedding, without ever
reporting its loss. Run as ``qtrain run tied_gpt.py -- OUT`` (no qtrain run options): every rank
runs it, and its own server lines serve (tests/test_export_aliases.py).

Writes OUT/served-by-script (the serving rank ran this script) and OUT/worker-0.pt (worker 0's
trained state_dict, to compare with ``qtrain checkpoint export``)."""

import sys
from pathlib import Path

import torch

import qtrain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tied_models import TinyGPT  # noqa: E402

out = Path(sys.argv[1])
sess = qtrain.init(None, ["train.steps=6", "checkpoint.every=0", "train.log_every=1000"], out=out)
if sess.is_server:
    sess.serve()
    (out / "served-by-script").write_text("rank 0 ran the script and served\n")
    raise SystemExit

torch.manual_seed(0)
model = TinyGPT()
opt = sess.optimizer(model)
gen = torch.Generator().manual_seed(sess.worker_index)
while sess.step < 6:
    opt.zero_grad()
    model.loss(torch.randint(0, 16, (4, 8), generator=gen)).backward()  # the loss is never reported
    opt.step()
sess.checkpoint()
if sess.worker_index == 0:
    torch.save(model.state_dict(), out / "worker-0.pt")
