"""``session.optimizer(model)``: the user's loop keeps its shape; the optimizer step is qtrain's.

Like Horovod's ``DistributedOptimizer`` it is a ``torch.optim.Optimizer``, so LR schedulers,
``GradScaler`` and gradient clipping see what they expect: one param group holding the model's
trainable parameters, whose ``lr`` starts at ``algorithm.lr``. What ``step()`` does is the
configured algorithm (``algorithm.name``: its worker rule, compression with error feedback, the
server's rule and the downlink), not a torch optimizer's update.

- ``step()`` sends this step's gradient to the server and applies the downlink to the model.
  With overlap (``runtime.overlap``, or ``overlap=`` here) backward's hooks already sent each
  segment as it completed; then nothing may change the gradient between ``backward()`` and
  ``step()``, which is checked. Clip, unscale or accumulate with ``overlap=False``.
- ``zero_grad()`` zeroes the flat gradient (the parameters' ``.grad`` stay views into it; a
  ``model.zero_grad()`` that sets them to None is repaired by the next backward).
- ``param_groups[0]["lr"]`` is read at each step's first segment: a schedule that changes it
  between steps changes the algorithm's learning rate on the workers and on the server. It
  travels as a float32 factor of ``algorithm.lr`` (docs/library.md).
- ``GradScaler``: ``scaler.step(optimizer)`` always calls ``step()`` (``_step_supports_amp_scaling``):
  gradients not unscaled yet are unscaled here; a worker whose scaled gradient overflowed sends
  zero for that step, since one worker cannot skip a step the others take.
- ``no_sync()``: backward passes inside it only accumulate (DDP's name).
"""

from __future__ import annotations

import contextlib

import torch

from qtrain.library.errors import UsageError


class DistributedOptimizer(torch.optim.Optimizer):
    _step_supports_amp_scaling = True

    def __init__(self, worker, params):
        self._worker = worker
        super().__init__(params, {"lr": worker.lr})
        if worker.initial_lr is not None:  # a resume: what the run's scheduler started from
            self.param_groups[0]["initial_lr"] = worker.initial_lr
        worker.lr_of, worker.group = self._current_lr, self.param_groups[0]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def _current_lr(self) -> float:
        """The param group's learning rate, read at each step's first segment. After a resume,
        the first read restores the checkpoint's rate: a scheduler built after the optimizer has
        applied its own factor to it by then (LinearLR, warm-ups), as torch's
        ``optimizer.load_state_dict`` after the scheduler's construction would undo."""
        if self._worker.pending_lr is not None:
            self.param_groups[0]["lr"], self._worker.pending_lr = self._worker.pending_lr, None
        lr = self.param_groups[0]["lr"]
        lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
        if not lr >= 0.0 or lr == float("inf"):
            raise UsageError(f"optimizer learning rate {lr!r} is not a finite non-negative number")
        return lr

    def backward(self, loss: torch.Tensor, scaler=None) -> None:
        """``loss.backward()`` that also reports the loss to qtrain's trace and progress line (a
        plain ``loss.backward()`` works too; then pass ``loss=`` to :meth:`step`). With a
        ``GradScaler``: the unscaled loss is reported and ``scaler.scale(loss)`` is backpropagated."""
        self._worker.set_loss(loss.detach())
        (scaler.scale(loss) if scaler is not None else loss).backward()

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """Send this step's gradient, apply the server's downlink. Returns the closure's loss."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._worker.step(
            loss=loss.detach() if isinstance(loss, torch.Tensor) else loss,
            found_inf=getattr(self, "found_inf", None),
            grad_scale=getattr(self, "grad_scale", None),
        )
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient (``set_to_none`` is ignored: the ``.grad`` views must stay)."""
        self._worker.flat.grads.zero_()

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes in this block accumulate without sending (gradient accumulation with
        overlap on); the step's last backward runs outside it."""
        previous, self._worker.accumulating = self._worker.accumulating, True
        try:
            yield
        finally:
            self._worker.accumulating = previous

    def state_dict(self) -> dict:
        """The learning rate only: ``session.checkpoint`` saves the algorithm's state itself."""
        return {"lr": self.lr}

    def load_state_dict(self, state_dict: dict) -> None:
        self.param_groups[0]["lr"] = float(state_dict["lr"])

    def add_param_group(self, param_group: dict) -> None:
        """The one group, which torch's ``__init__`` adds: the model's trainable parameters (leaf
        tensors, each once: ``session.optimizer`` passes them) and the defaults. Built here, not by
        torch's ``add_param_group``: that one is wrapped in ``torch._disable_dynamo``, whose first
        call imports ``torch._dynamo``, 1.5 to 2.5 s of start-up on every worker."""
        if getattr(self, "param_groups", None):  # torch's __init__ adds the first group
            raise UsageError("the qtrain optimizer has one param group (add_param_group is not supported)")
        self.param_groups.append({**self.defaults, **param_group, "params": list(param_group["params"])})
