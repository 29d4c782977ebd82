"""Counter-based random numbers for stochastic rounding: Philox4x32-10.

Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011)
maps a 128-bit counter and a 64-bit key to four 32-bit words with ten rounds of

    (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2          (32x32 -> 64-bit products)
    c = (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0);   k += (W0, W1)  (between rounds)

It is the generator of cuRAND, JAX and PyTorch's CUDA backend; it passes TestU01's BigCrush.

qtrain draws one uniform per element of the flat parameter vector. A :class:`CounterStream` names
the key (the run seed, the link and the worker: ``seeding.stream_seed``) and the step; element ``i``
of the flat vector (``i = offset + j`` for element ``j`` of a segment starting at ``offset``) uses

    counter = (i // 4 mod 2^32,  i // 4 div 2^32,  step mod 2^32,  step div 2^32)
    word    = i % 4 of philox(counter, key)
    u_i     = (word >> 8) * 2^-24                           (exact in float32, in [0, 1))

So a draw depends on nothing but (seed, link, worker, step, element): not on the device, the
thread count, the chunking, the segmentation or the order of calls, and a checkpoint needs no
generator state. This module is the torch reference (int64 arithmetic, any device); the compiled
kernels in ``qtrain.kernels`` compute the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF
TWO_POW_M24 = 2.0**-24


@dataclass(frozen=True)
class CounterStream:
    """The random stream of one link of one rank at one step; ``offset`` is the flat-vector index
    of the first element being encoded (a segment's start)."""

    key: int
    step: int = 0
    offset: int = 0

    def __post_init__(self):
        for name in ("key", "step", "offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
                raise ValueError(f"CounterStream.{name} must be an integer in [0, 2**64), got {value!r}")

    def at(self, offset: int) -> CounterStream:
        return CounterStream(self.key, self.step, offset)


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for 32-bit a and m, in int64 without overflow: the
    product is split at 16 bits of ``a`` (each partial product fits in 48 bits)."""
    p_lo = (a & 0xFFFF) * m
    p_hi = (a >> 16) * m
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(counters: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Philox4x32-10 of four int64 tensors of 32-bit counter words under a 64-bit key."""
    c0, c1, c2, c3 = counters
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


BLOCK_ELEMENTS = 1 << 18  # CPU: uniforms are made in blocks whose int64 temporaries stay in cache


def random_words(stream: CounterStream, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 32-bit words (as int64) of elements ``offset .. offset + n`` of ``stream``."""
    first, last = stream.offset // 4, (stream.offset + n + 3) // 4
    group = torch.arange(first, last, dtype=torch.int64, device=device)
    step = torch.full_like(group, stream.step & MASK32)
    words = philox4x32(
        [group & MASK32, group >> 32, step, torch.full_like(group, stream.step >> 32)], stream.key
    )
    flat = torch.stack(words, dim=1).view(-1)
    skip = stream.offset - 4 * first
    return flat[skip : skip + n]


def uniforms(stream: CounterStream, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """u_i = (word_i >> 8) * 2^-24 as float32: 24 random bits, exactly representable, in [0, 1)."""
    device = torch.device(device)
    block = max(1, n if device.type != "cpu" else BLOCK_ELEMENTS)
    out = torch.empty(n, dtype=torch.float32, device=device)
    for done in range(0, n, block):  # counter-based: any block boundary gives the same draws
        words = random_words(stream.at(stream.offset + done), min(block, n - done), device)
        torch.mul((words >> 8).to(torch.float32), TWO_POW_M24, out=out[done : done + words.numel()])
    return out
