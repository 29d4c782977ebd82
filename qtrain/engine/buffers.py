"""Model buffers (BatchNorm running statistics and the like): one policy, ``model.buffers``.

Parameters are trained through the flat vector; buffers are not parameters. A worker's forward
passes update its own replica's buffers (BatchNorm's running mean and variance, on its shard's
batches), while the serving rank, which evaluates and checkpoints, never runs a training forward:
left alone, it would evaluate with the buffers the model was built with. On digits, an MLP with a
default ``BatchNorm1d`` reached 0.891 test accuracy that way under MPI against 0.967 for its twin
without running statistics (issue #20); in the simulator, 300 steps, 0.889 against 0.958, and
0.964 with this policy (tests/test_model_buffers.py).

So at every step where the server evaluates (``train.eval_every``, ``train.steps``, an agreed stop:
the step's downlink asks for them), at the end of the run, and whenever a library loop calls
``session.sync_buffers()``, the workers' buffers are combined, and the result is what the server
evaluates *and* what every worker continues from, so that all replicas hold the same buffers
afterwards, as they hold the same parameters. A checkpoint changes nothing: it saves each
replica's own buffers (what a resume restores, so it is bit-exact) and their combination (what
the server evaluated with, and what ``checkpoint export`` gives):

- ``average`` (default): floating-point buffers are the mean over workers, summed in worker order
  in the buffer's dtype, then divided by the number of workers (bit-reproducible; the simulator and
  MPI compute it with this same function); a buffer equal on every worker is kept exactly. Integer
  buffers (BatchNorm's ``num_batches_tracked``) are counters that every worker advances alike;
  they are taken from worker 0.
- ``broadcast``: every buffer is worker 0's, as torch DDP's ``broadcast_buffers=True`` does (DDP
  broadcasts at every forward; here at evaluations, which is when they are read).

The mean of per-shard running variances is not the variance of the union (it leaves out the
spread of the shard means); with shards drawn from one distribution the difference is small, and
it is what averaging per-replica statistics gives in every data-parallel framework that does it.
Between syncs the workers' buffers drift apart; nothing reads them then. Only persistent buffers
(those in ``state_dict``) take part; a model without them does nothing here, at no cost.
"""

from __future__ import annotations

import torch
from torch import nn

from qtrain.config.schema import BUFFER_POLICIES as POLICIES


def persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s buffers that belong to its state (``state_dict``), by name: live tensors.
    Non-persistent buffers (a causal mask built from the config) are the same on every replica by
    construction and not part of a saved model, so they are left alone."""
    ids = {id(b) for b in module.buffers()}
    return {k: v for k, v in module.state_dict(keep_vars=True).items() if id(v) in ids}


def buffer_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s persistent buffers, by name, on the CPU."""
    return {name: b.detach().to("cpu", copy=True) for name, b in persistent_buffers(module).items()}


def load_buffers(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module``'s persistent buffers in place; ValueError naming the first
    buffer that is missing, extra or of another shape."""
    live = persistent_buffers(module)
    if set(live) != set(state):
        odd = sorted(set(live) ^ set(state))[0]
        raise ValueError(f"model buffer {odd!r} is {'missing' if odd in live else 'not in the model'}")
    with torch.no_grad():
        for name, b in live.items():
            if tuple(state[name].shape) != tuple(b.shape):
                raise ValueError(
                    f"model buffer {name!r} has shape {list(state[name].shape)}, the model {list(b.shape)}"
                )
            b.copy_(state[name])


def combine(policy: str, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The buffers every replica continues from, given each worker's (in worker order). A buffer
    that is bitwise the same on every worker is kept as it is (an average of equal float32
    values can move them by an ulp)."""
    if policy not in POLICIES:
        raise ValueError(f"model.buffers: {policy!r} is not one of {', '.join(POLICIES)}")
    first = states[0]
    if policy == "broadcast":
        return {name: b.clone() for name, b in first.items()}
    out = {}
    for name, b in first.items():
        if not b.is_floating_point() or all(torch.equal(s[name], b) for s in states[1:]):
            out[name] = b.clone()
            continue
        acc = b.clone()
        for s in states[1:]:
            acc.add_(s[name])
        out[name] = acc.div_(len(states))
    return out


def checkpoint_buffers(policy: str, states: list[dict[str, torch.Tensor]], module: nn.Module) -> dict:
    """A checkpoint's ``/buffers``: the workers' own ``states`` (in worker order) combined, which
    the serving rank's ``module`` adopts for its evaluations and exports; the replicas keep their
    own, so writing a checkpoint changes no worker."""
    combined = combine(policy, states)
    load_buffers(module, combined)
    return combined


def has_buffers(module: nn.Module) -> bool:
    """Whether ``module`` has persistent buffers (then they follow ``model.buffers``)."""
    return bool(persistent_buffers(module))
