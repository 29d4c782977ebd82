"""Every rank trains the same model: the ranks compare their models' parameter and buffer names,
shapes and dtypes (a mismatch is one line naming the rank and the first difference); then every
rank adopts worker 0's initial parameters and buffers (``library/model_sharing.py``), as torch DDP
broadcasts rank 0's module state. A plug-in that initialises from an unseeded generator, or from
anything that differs between ranks, therefore still trains one model; the built-in models are
seeded alike on every rank, so for them the broadcast changes no bit."""

from __future__ import annotations


def model_signature(model) -> list[tuple[str, tuple[int, ...], str]]:
    """(what, shape, dtype) of every trainable parameter, every frozen one and every buffer of
    ``model`` (an ``nn.Module`` or a FlatModel)."""
    module = getattr(model, "module", model)
    named = list(module.named_parameters())
    params = [(f"parameter {name}", tuple(p.shape), str(p.dtype)) for name, p in named if p.requires_grad]
    params += [
        (f"frozen parameter {name}", tuple(p.shape), str(p.dtype)) for name, p in named if not p.requires_grad
    ]
    buffers = [(f"buffer {name}", tuple(b.shape), str(b.dtype)) for name, b in module.named_buffers()]
    # every buffer, persistent or not: a non-persistent one of another shape is another model too
    return params + buffers


def first_difference(reference: list, other: list, ref: str = "rank 0's") -> str | None:
    """How ``other`` (a rank's signature) first differs from ``reference`` (``ref``: whose it is),
    as words that follow "it", or None."""
    for mine, theirs in zip(other, reference, strict=False):
        if mine[0] != theirs[0]:
            return f"has {mine[0]} where {ref} has {theirs[0]}"
        if mine[1:] != theirs[1:]:
            return (
                f"has {mine[0]} of shape {list(mine[1])} ({mine[2]}) where {ref} is "
                f"{list(theirs[1])} ({theirs[2]})"
            )
    if len(other) > len(reference):
        return f"has {other[len(reference)][0]}, which {ref} has not"
    if len(other) < len(reference):
        return f"lacks {ref} {reference[len(other)][0]}"
    return None
