"""The compiled fast path of an entropy-coded codec (``codecs.entropy``): the inner codec's kernel
does its one pass into a scratch message, then Zstandard compresses that message's payload into the
frame; on the way in, each message is expanded before the inner kernel combines them. The
compression itself is the zstd library's (one more pass over the codes, which are 1/16 of the
floats at 2 bits)."""

from __future__ import annotations

import torch

from qtrain.codecs.entropy import EntropyCoded


class EntropyKernelCodec:
    """``inner`` (the fast path of ``codec.inner``) with ``codec``'s entropy stage around it."""

    def __init__(self, codec: EntropyCoded, inner):
        self.codec, self.inner = codec, inner
        self.fuses_adam = inner.fuses_adam

    def __repr__(self) -> str:
        return f"EntropyKernelCodec({self.inner!r}, {self.codec.method!r})"

    def encode_ef(self, p, e=None, alpha=1.0, beta=1.0, rng=None, out: torch.Tensor | None = None, **kwargs):
        """The inner ``encode_ef`` (same arguments and sums), its message entropy-coded into ``out``."""
        raw, sums = self.inner.encode_ef(p, e, alpha, beta, rng, None, **kwargs)
        self.codec.check_frame(raw, out)
        return self.codec.compress(raw, out), sums

    def decode_combine(self, messages: list[torch.Tensor], out: torch.Tensor, mode: str) -> torch.Tensor:
        return self.inner.decode_combine([self.codec.expand(m, out.numel()) for m in messages], out, mode)
