"""``session.optimizer(model)``: the user's loop keeps its shape; the optimizer step is qtrain's.

Like Horovod's ``DistributedOptimizer`` it is a ``torch.optim.Optimizer``, so LR schedulers,
``GradScaler`` and gradient clipping see what they expect: the param groups the user passed
(``library/group_sharing.py``; one group of the model's trainable parameters by default), each
with its ``lr``, ``weight_decay`` and the algorithm's own values, starting from the ``algorithm``
section. What ``step()`` does is the configured algorithm (``algorithm.name``: its worker rule,
compression with error feedback, the server's rule and the downlink) with each group's values,
not a torch optimizer's update.

- ``step()`` sends this step's gradient to the server and applies the downlink to the model.
  With overlap (``runtime.overlap``, or ``overlap=`` here) backward's hooks already sent each
  segment as it completed; then nothing may change the gradient between ``backward()`` and
  ``step()``, which is checked. Clip, unscale or accumulate with ``overlap=False``.
- ``zero_grad()`` zeroes the flat gradient (the parameters' ``.grad`` stay views into it; a
  ``model.zero_grad()`` that sets them to None is repaired by the next backward).
- every group's ``lr`` is read at each step's first segment: a schedule (or the loop itself) that
  changes it between steps changes that group's learning rate on the workers and on the serving
  ranks; it travels with the step's records (docs/library.md).
- ``clip_grad_norm_(max_norm)`` clips the gradient averaged over the workers, as
  ``torch.nn.utils.clip_grad_norm_`` does under DDP (docs/library.md, "Clipping").
- ``GradScaler``: ``scaler.step(optimizer)`` always calls ``step()`` (``_step_supports_amp_scaling``):
  gradients not unscaled yet are unscaled here; a worker whose scaled gradient overflowed sends
  zero for that step, since one worker cannot skip a step the others take.
- ``no_sync()``: backward passes inside it only accumulate (DDP's name).
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch

from qtrain.library.errors import UsageError


class DistributedOptimizer(torch.optim.Optimizer):
    _step_supports_amp_scaling = True

    def __init__(self, worker, shown: list, keys: tuple[str, ...]):
        """``shown``: (parameters, values) per group (``group_sharing.group_specs``); ``keys``: the
        values every group shows (``lr``, ``weight_decay`` and the algorithm's own)."""
        self._worker = worker
        groups = []
        for (members, _), algo, lr in zip(
            shown, worker.engine.groups.algorithms, worker.groups_lrs(), strict=True
        ):
            group = {"params": list(members), "lr": lr}
            for key in keys:
                if key == "betas":
                    group["betas"] = (algo.hp.beta1, algo.hp.beta2)
                elif key != "lr":
                    group[key] = getattr(algo.hp, key)
            groups.append(group)
        self._building = True
        super().__init__(groups, {})
        self._building = False
        self._fixed = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in groups]
        if worker.initial_lrs is not None:  # a resume: what the run's scheduler started from
            for group, value in zip(self.param_groups, worker.initial_lrs, strict=True):
                group["initial_lr"] = value
        worker.lr_of = self._current_lrs
        worker.optimizer = self

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def _current_lrs(self) -> list[float]:
        """Every group's learning rate, read at each step's first segment. After a resume, the
        first read restores the checkpoint's rate of a group whose rate a torch LR scheduler
        changed since ``session.optimizer()`` (its construction applies its own factor, which
        torch's ``optimizer.load_state_dict`` after building the scheduler would undo); a rate the
        loop set itself is kept (nanoGPT sets every group's lr before each step)."""
        pending = self._worker.pending_lrs
        if pending is not None:
            for group, lr in zip(self.param_groups, pending, strict=True):
                if group.scheduler_wrote:
                    dict.__setitem__(group, "lr", lr)
            self._worker.pending_lrs = None
        out = []
        for g, group in enumerate(self.param_groups):
            for key, value in self._fixed[g].items():
                if group.get(key) != value:
                    raise UsageError(
                        f"param group {g}: {key} changed from {value!r} to {group.get(key)!r} after "
                        "session.optimizer(); only lr may change between steps (the other values are "
                        "agreed with every rank when the groups are made)"
                    )
            lr = group["lr"]
            lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
            if not lr >= 0.0 or lr == float("inf"):
                raise UsageError(f"param group {g}: learning rate {lr!r} is not a finite non-negative number")
            out.append(lr)
        return out

    def backward(self, loss: torch.Tensor, scaler=None) -> None:
        """``loss.backward()`` that also reports the loss to qtrain's trace and progress line (a
        plain ``loss.backward()`` works too; then pass ``loss=`` to :meth:`step` or
        ``session.log(loss=...)``). With a ``GradScaler``: the unscaled loss is reported and
        ``scaler.scale(loss)`` is backpropagated; ``backward(scaler.scale(loss))`` reports
        the unscaled loss too, once ``scaler.step(optimizer)`` shows a GradScaler drove the step
        (:func:`scaler_factor`)."""
        self._worker.set_loss(loss.detach(), None if scaler is not None else scaler_factor(loss))
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def clip_grad_norm_(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False, foreach=None
    ):
        """Clip this step's gradient by the norm of the gradient averaged over the workers, as
        ``torch.nn.utils.clip_grad_norm_`` clips under DDP: the serving ranks multiply the mean
        by min(1, max_norm / (norm + 1e-6)) before the algorithm's rule. Returns a 0-d tensor that
        holds that norm once ``step()`` returned (NaN until then). Needs ``overlap=False`` (the
        norm must be asked for before the first segment leaves). For qadam and efficient-adam,
        whose workers run their local Adam step on their own gradient before anything is
        averaged, it clips each worker's own gradient by its own norm (returned at once) and says
        so once in the log."""
        return self._worker.clip(float(max_norm), float(norm_type), error_if_nonfinite)

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
        """The learning rates only (``lr``: the first group's; ``lrs``: every group's):
        ``session.checkpoint`` saves the algorithm's state itself."""
        return {"lr": self.lr, "lrs": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict) -> None:
        lrs = state_dict.get("lrs", [state_dict["lr"]])
        if len(lrs) != len(self.param_groups):
            raise UsageError(
                f"optimizer.load_state_dict(): {len(lrs)} learning rate(s) for "
                f"{len(self.param_groups)} param groups"
            )
        for group, lr in zip(self.param_groups, lrs, strict=True):
            group["lr"] = float(lr)

    def add_param_group(self, param_group: dict) -> None:
        """The groups are fixed when ``session.optimizer`` agrees on them with every rank: torch's
        ``__init__`` adds them here. Not torch's own ``add_param_group``: that one is wrapped in
        ``torch._disable_dynamo``, whose first call imports ``torch._dynamo``, 1.5 to 2.5 s of
        start-up on every worker."""
        if getattr(self, "_building", False):
            self.param_groups.append(_LoggedGroup(param_group))
            return
        raise UsageError(
            "the qtrain optimizer's param groups are fixed by session.optimizer(): pass every group there "
            "(add_param_group is not supported)"
        )


class _LoggedGroup(dict):
    """A param group that notes whether a torch LR scheduler wrote its ``lr`` last (the resume
    rule of :meth:`DistributedOptimizer._current_lrs`)."""

    scheduler_wrote = False

    def __setitem__(self, key, value):
        if key == "lr":
            caller = sys._getframe(1).f_globals.get("__name__", "")
            self.scheduler_wrote = caller.startswith("torch.optim.lr_scheduler")
        super().__setitem__(key, value)


def scaler_factor(loss: torch.Tensor) -> float | None:
    """The scale of ``GradScaler.scale(loss)``, which is ``loss * scale`` with the scaler's scale a
    float32 tensor of one element holding a power of two (the scaler starts at 2**16 and only
    doubles or halves it); None for anything else. ``step()`` divides the reported loss by it only
    when a GradScaler drove that step (it set ``found_inf``)."""
    fn = loss.grad_fn
    if fn is None or fn.name() != "MulBackward0":
        return None
    other = getattr(fn, "_saved_other", None)
    if not isinstance(other, torch.Tensor) or other.numel() != 1 or other.dtype != torch.float32:
        return None
    if other.requires_grad:
        return None
    value = float(other.detach().reshape(()))
    mantissa, _ = math.frexp(value)
    return value if value >= 1.0 and mantissa == 0.5 else None
