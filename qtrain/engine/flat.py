"""A model whose parameters and gradients live in two flat contiguous float32 buffers.

Every parameter becomes a view into ``params`` and its ``.grad`` a view into ``grads``, so
autograd accumulates straight into the flat gradient, and applying a flat update changes the
model in place. Codecs and algorithms only ever see these 1-D buffers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def trainable_parameters(module: nn.Module, what: str = "the model") -> list[tuple[str, nn.Parameter]]:
    """The parameters qtrain trains (those with ``requires_grad``), after refusing what it cannot
    train: no trainable parameter at all (once a ZeroDivisionError), a parameter that is not
    float32 (an integer one was silently left out; a float64 or float16 one would silently become
    float32). Frozen float parameters are left out, as in torch.optim."""
    named = list(module.named_parameters())
    for name, p in named:
        if p.dtype != torch.float32:
            kind = (
                "float32 (module.float(); autocast for mixed precision)"
                if p.is_floating_point()
                else ("floating-point (keep integer state in a buffer: register_buffer)")
            )
            raise ValueError(
                f"{what}: parameter {name} is {str(p.dtype).replace('torch.', '')}: qtrain trains {kind}"
            )
    trainable = [(name, p) for name, p in named if p.requires_grad]
    if not trainable or not sum(p.numel() for _, p in trainable):
        raise ValueError(f"{what} has no trainable parameters: nothing to train")
    return trainable


class Layout(list):
    """``FlatModel.layout``: ``(name, offset, shape)`` of every trained parameter in flat order (a
    plain list of them, compared and serialised as one), and ``aliases``: the other ``state_dict``
    names of those parameters, each mapped to its name in the layout. A tied weight (nanoGPT's
    ``self.transformer.wte.weight = self.lm_head.weight``) is one parameter, trained once under
    the first name ``named_parameters()`` gives it (``transformer.wte.weight``), while its module's
    ``state_dict()`` holds it under every name (``lm_head.weight`` too): checkpoints record
    ``aliases`` so that ``qtrain checkpoint export`` writes every name and
    ``load_state_dict(strict=True)`` accepts the export."""

    def __init__(self, entries=(), aliases: dict[str, str] | None = None):
        super().__init__(entries)
        self.aliases: dict[str, str] = dict(aliases or {})


def parameter_aliases(module: nn.Module, trained: list[str]) -> dict[str, str]:
    """``{other name: trained name}`` for every name under which ``module`` registers one of its
    ``trained`` parameters besides the first (shared parameters and shared submodules alike:
    ``named_parameters(remove_duplicate=False)`` lists the names its ``state_dict`` has)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    wanted = set(trained)
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in first:
            first[id(p)] = name
        elif first[id(p)] in wanted:
            aliases[name] = first[id(p)]
    return aliases


class FlatModel:
    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module.to(device)
        self.device = device
        trainable = trainable_parameters(module)
        numel = sum(p.numel() for _, p in trainable)
        self.params = torch.empty(numel, dtype=torch.float32, device=device)
        self.grads = torch.zeros(numel, dtype=torch.float32, device=device)
        self.layout = Layout(aliases=parameter_aliases(module, [name for name, _ in trainable]))
        self._trained = {name for name, _ in trainable}
        self._frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
        self._grad_views: list[torch.Tensor] = []
        offset = 0
        for name, p in trainable:
            n = p.numel()
            self.params[offset : offset + n].copy_(p.detach().reshape(-1))
            p.data = self.params[offset : offset + n].view_as(p)
            p.grad = self.grads[offset : offset + n].view_as(p)
            self._grad_views.append(p.grad)
            self.layout.append((name, offset, tuple(p.shape)))
            p.register_post_accumulate_grad_hook(self._reporter(len(self.layout) - 1))
            offset += n
        self._on_param_ready = None

    @property
    def numel(self) -> int:
        return self.params.numel()

    def _reporter(self, index: int):
        def hook(param) -> None:
            view = self._grad_views[index]
            if param.grad is None or param.grad.data_ptr() != view.data_ptr():
                # ``zero_grad(set_to_none=True)`` (torch's default for a module) dropped the view:
                # backward made a new tensor; it goes back into the flat gradient
                view.copy_(param.grad if param.grad is not None else torch.zeros_like(view))
                param.grad = view
            if self._on_param_ready is not None:
                self._on_param_ready(index)

        return hook

    def reattach_grads(self) -> None:
        """Every parameter's ``.grad`` is its view of ``grads`` again: one that ``zero_grad(
        set_to_none=True)`` dropped and no backward re-made (an unused parameter) is zero, one
        that was assigned is copied in."""
        now = dict(self.module.named_parameters())
        for (name, _, _), view in zip(self.layout, self._grad_views, strict=True):
            p = now[name]
            if p.grad is None:
                view.zero_()
                p.grad = view
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
                p.grad = view

    def changed_parameter(self) -> str | None:
        """How the first parameter that no longer lives in ``params`` changed (replaced, moved to
        another device, reshaped or frozen since the model was flattened), or which parameter
        trains now that was left out then (unfrozen with ``requires_grad_(True)``, or added): None
        when the trained set is still the flattened one. The set is fixed here, as DDP fixes it
        when it is built (its reducer hooks the parameters that require grad then: one unfrozen
        later is never averaged, one frozen later fails the next iteration with "Expected to have
        finished reduction" unless ``find_unused_parameters=True``)."""
        now = dict(self.module.named_parameters())
        for name, p in now.items():
            if p.requires_grad and name not in self._trained:
                how = "unfrozen (requires_grad=True)" if name in self._frozen else "added"
                return f"parameter {name} was {how}"
        for name, offset, shape in self.layout:
            p = now.get(name)
            if p is None:
                return f"parameter {name} was removed"
            if tuple(p.shape) != shape:
                return f"parameter {name} changed shape from {list(shape)} to {list(p.shape)}"
            if p.device != self.device or p.data_ptr() != self.params[offset:].data_ptr():
                return f"parameter {name} was replaced or moved to {p.device}"
            if not p.requires_grad:
                return f"parameter {name} was frozen (requires_grad=False)"
        return None

    def loss_and_grad(
        self, x: torch.Tensor, y: torch.Tensor, task: str, on_param_ready=None, on_loss=None
    ) -> float:
        """Forward and backward on one batch; the gradient lands in ``self.grads``. With
        ``on_param_ready``, it is called with a parameter's index in ``layout`` as soon as that
        parameter's gradient is final, during backward (from autograd's post-accumulate hook);
        ``on_loss`` gets the batch loss between forward and backward."""
        self.grads.zero_()
        self.module.train()
        loss = loss_fn(self.module(x), y, task)
        if on_loss is not None:
            on_loss(float(loss.detach()))
        self._on_param_ready = on_param_ready
        try:
            loss.backward()
        finally:
            self._on_param_ready = None
        return float(loss.detach())

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, task: str, batch: int = 1024) -> dict:
        """Mean loss (and accuracy for classification) over a whole split."""
        return evaluate_module(self.module, x, y, task, self.device, batch)


@torch.no_grad()
def evaluate_module(module, x, y, task: str, device: torch.device, batch: int = 1024) -> dict:
    """Mean loss (and accuracy for classification) of ``module`` over a whole split, in eval mode.
    Language models: loss, accuracy and perplexity per token."""
    module.eval()
    total, correct = 0.0, 0
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].to(device)
        yb = y[start : start + batch].to(device)
        out = module(xb)
        total += float(loss_fn(out, yb, task, reduction="sum"))
        if task != "regression":
            correct += int((out.argmax(dim=1) == yb).sum())
    n = y.numel() if task == "language-model" else len(x)  # tokens, or samples
    result = {"loss": total / max(n, 1)}
    if task != "regression":
        result["accuracy"] = correct / max(n, 1)
    if task == "language-model":
        result["perplexity"] = math.exp(min(result["loss"], 700.0))
    return result


def loss_fn(out: torch.Tensor, y: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for classification (per token for language models: ``out`` (N, V, T));
    0.5 * squared error summed over targets for regression."""
    if task in ("classification", "language-model"):
        return F.cross_entropy(out, y, reduction=reduction)
    per_sample = 0.5 * (out - y).pow(2).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()
