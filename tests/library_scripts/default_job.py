"""The default job written as a user script: the same data, model, loss and batches as qtrain train."""

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import qtrain
from qtrain.data import load_dataset
from qtrain.models import build_model
from qtrain.seeding import derive_seed

sess = qtrain.session()
cfg = sess.config
ds = load_dataset(cfg.data, cfg.seed)
torch.manual_seed(derive_seed(cfg.seed, "model"))
model = build_model(cfg.model.name, ds.input_shape, ds.outputs, cfg.model.hidden, cfg.model.kwargs)
opt = sess.optimizer(model)
loader = sess.shard(TensorDataset(ds.x_train, ds.y_train))
model.train()
while sess.step < cfg.train.steps:
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        opt.backward(loss)
        opt.step()
        sess.log(loss=loss)
        if sess.step == cfg.train.steps:
            break
