"""``qtrain train``: the built-in trainer, one user of the library API (docs/library.md), read
top to bottom like any script written on it.

Every rank loads the config, its data and its model, and the ranks agree on all three (a
mismatch or a failure anywhere is one line from rank 0, exit 2). The serving rank then serves
with its own copy of the model, which it evaluates every ``train.eval_every`` steps and at the
end. Every worker wraps the model in the distributed optimizer and runs the loop below over its
shard of the training set: forward, the task's loss, backward (whose hooks send each segment as it
completes), step, and a checkpoint where the config's cadence or an agreed stop asks for one."""

from __future__ import annotations

import torch

from qtrain.engine.flat import evaluate_module, loss_fn
from qtrain.library.session import _fail_rank, _Request, _start_builtin


def train(config: str, overrides, out=None, resume=None, reset_worker_state=False, overwrite=False):
    """Run ``qtrain train`` on this rank: the summary on the serving rank, None on a worker.
    Raises SystemExit(2) on every rank for a refusal (rank 0 printed it)."""
    request = _Request(config, tuple(overrides), out, resume, reset_worker_state, overwrite)
    session = _start_builtin(request)
    model, data = session._builtin_model, session._setup.dataset
    try:
        if session.is_server:
            return serve(session, model, data)
        if session._topology.colocated:  # rank 0 leads: it evaluates its copy of the master model
            session._colocated_evaluation = evaluation(session, data)
        work(session, model, data, session._setup.steps)
        return session.close()  # a co-located rank 0's summary, else None
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failure on any rank ends the whole job
        _fail_rank(session._backend, session._svc, exc, exc.__traceback__, expected=(ValueError,))


def serve(session, model, data) -> dict:
    ev = evaluation(session, data)
    return session.serve(model, evaluate=ev.test, evaluate_train=ev.train)


def evaluation(session, data):
    """What the lead evaluates: the test split at the run's cadence, the training split at the end."""
    from qtrain.library.serve import Evaluation

    def test(module):
        return evaluate_module(module, data.x_test, data.y_test, data.task, _device_of(module))

    def train_split(module):
        return evaluate_module(module, data.x_train, data.y_train, data.task, _device_of(module))

    return Evaluation(test, train_split, own_model=True)


def _device_of(module: torch.nn.Module) -> torch.device:
    """Where the lead's model lives (the serving rank's device, or a co-located rank 0's)."""
    return next(module.parameters()).device


def work(session, model, data, steps: int) -> None:
    optimizer = session.optimizer(model)
    loader = session.shard(InMemory(data.x_train, data.y_train), collate_fn=_as_is)
    batches = _endless(loader)
    model.train()
    while session.step < steps:
        x, y = next(batches)
        optimizer.zero_grad()
        loss = loss_fn(model(x.to(session.device)), y.to(session.device), data.task)
        optimizer.backward(loss)
        optimizer.step()
        if session.checkpoint_due:
            session.checkpoint()
        if session.should_stop:
            break


class InMemory(torch.utils.data.Dataset):
    """The built-in datasets' tensors as a Dataset whose batches are one indexing each
    (``__getitems__``, which the DataLoader prefers to one ``__getitem__`` per sample)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]):
        return self.x[indices], self.y[indices]


def _as_is(batch):
    return batch


def _endless(loader):
    """The loader's batches epoch after epoch (its position is checkpointed)."""
    while True:
        yield from loader
