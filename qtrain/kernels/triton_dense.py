"""Triton kernels for the dense bucketed codecs on a GPU: the bytes of the numba kernels and of the
torch reference (``qtrain.codecs``).

One program per bucket, a block of P = next power of two >= bucket lanes. Encode: v = p + alpha e,
the bucket scale (the folding tree of ``codecs.base.bucket_sums``: reshape to (2, w/2), sum the
two rows, until one value is left), the codes (Philox4x32-10 by flat element index for stochastic
rounding: ``tl.philox`` is the same generator as ``codecs.philox``), the packed bytes, Q(v), the
error feedback, target and values. Decode: N messages combined in worker order per element.

Exact float32 arithmetic on a GPU needs three precautions, all taken here: divisions are
``div_rn`` and square roots ``sqrt_rn`` (Triton's ``/`` and ``sqrt`` are approximate), and the
kernels are launched with ``enable_fp_fusion=False`` (no multiply-add contraction).

Supported: ``sign``; ``uniform``/``ternary`` with 1, 2, 4 or 8 bits; ``threshold``'s dense layout;
buckets up to ``MAX_BUCKET`` whose codes fill whole bytes (bucket * bits divisible by 8). Anything
else runs the torch reference on the device. Without a GPU, ``TRITON_INTERPRET=1`` runs these
kernels on CPU tensors, which is how ``tests/test_triton_kernels.py`` checks them byte for byte.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_BUCKET = 16384
# KIND and MODE are the numbers of ``kernel_codec`` (0 sign, 1 uniform, 2 threshold; 0 mean,
# 1 subtract, 2 set, 3 add), written as literals inside the kernels
FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _fold_sum(x, P: tl.constexpr, LOG2P: tl.constexpr):
    """bucket_sums: fold the (P,) block in halves, x[k] + x[k + w/2], down to one value."""
    for i in tl.static_range(LOG2P):
        x = tl.sum(tl.reshape(x, (2, P >> (i + 1))), axis=0)
    return tl.sum(x, axis=0)


@triton.jit
def _uniforms(offs, key, step_lo, step_hi):
    """Philox4x32-10 uniform of flat element ``offs`` (int64): word offs % 4 of counter
    (offs // 4, step), as (word >> 8) * 2^-24."""
    group = offs // 4
    c0 = (group & 0xFFFFFFFF).to(tl.uint32)
    c1 = (group >> 32).to(tl.uint32)
    c2 = (tl.zeros_like(group) + step_lo).to(tl.uint32)
    c3 = (tl.zeros_like(group) + step_hi).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(key, c0, c1, c2, c3)
    word = offs % 4
    r = tl.where(word == 0, r0, tl.where(word == 1, r1, tl.where(word == 2, r2, r3)))
    return (r >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def encode_kernel(
    p_ptr,
    e_ptr,
    target_ptr,
    values_ptr,
    scales_ptr,
    codes_ptr,
    stats_ptr,
    bad_ptr,
    n,
    alpha,
    beta,
    levels,
    kappa,
    key,
    step_lo,
    step_hi,
    offset,
    KIND: tl.constexpr,
    BUCKET: tl.constexpr,
    P: tl.constexpr,
    LOG2P: tl.constexpr,
    BITS: tl.constexpr,
    HAS_E: tl.constexpr,
    HAS_T: tl.constexpr,
    HAS_V: tl.constexpr,
    L2: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    LINF_REFERENCE: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, P)
    offs = j * BUCKET + lane
    live = (lane < BUCKET) & (offs < n)
    d = tl.minimum(n - j * BUCKET, BUCKET).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=live, other=0.0)
    if HAS_E:
        e = tl.load(e_ptr + offs, mask=live, other=0.0)
        v = p + e * alpha
    else:
        v = p
    a = tl.abs(v)
    nonfinite = tl.sum(tl.where(live & ~(a <= FLT_MAX), 1, 0), axis=0)
    s = levels.to(tl.float32)
    zero = tl.zeros_like(v)
    if KIND == 0:  # sign
        r = tl.math.div_rn(_fold_sum(a, P, LOG2P), d)
        code = tl.where(v >= 0, 1, 0)
        q = tl.where(v >= 0, zero + r, zero - r)
        kept = tl.sum(tl.zeros_like(code), axis=0)
    elif KIND == 1:  # uniform
        if L2:
            r = tl.sqrt_rn(_fold_sum(v * v, P, LOG2P))
        else:
            r = tl.max(a, axis=0)
        inv = tl.where(r > 0, tl.math.div_rn(1.0, r) * s, 0.0)
        step_val = tl.math.div_rn(r, s)
        # a subnormal scale overflows s / r: divide first there, as the reference does
        scaled = tl.where(inv == float("inf"), tl.math.div_rn(a, r) * s, a * inv)
        if STOCHASTIC:
            t = scaled + _uniforms(offset + offs, key, step_lo, step_hi)
        else:
            t = scaled + 0.5
        lvl = tl.minimum(tl.maximum(tl.floor(t), 0.0), s)
        codef = tl.where(v < 0, s - lvl, s + lvl)
        code = codef.to(tl.int32)
        q = (codef - s) * step_val
        kept = tl.sum(tl.zeros_like(code), axis=0)
    else:  # threshold (dense layout)
        if LINF_REFERENCE:
            ref = tl.max(a, axis=0)
        else:
            ref = tl.math.div_rn(_fold_sum(a, P, LOG2P), d)
        tau = kappa * ref
        keep = live & (a >= tau) & (a > 0)
        count = tl.sum(keep.to(tl.int32), axis=0)
        r = tl.math.div_rn(_fold_sum(tl.where(keep, a, 0.0), P, LOG2P), tl.maximum(count, 1).to(tl.float32))
        code = tl.where(keep, tl.where(v >= 0, 2, 0), 1)
        q = tl.where(keep, tl.where(v >= 0, zero + r, zero - r), zero)
        nonfinite += tl.where(ref <= FLT_MAX, 0, 1)
        kept = count
    bad = (nonfinite > 0) | ~(r <= FLT_MAX)
    tl.store(bad_ptr + j, bad.to(tl.int32))
    tl.store(scales_ptr + j, r)
    # pack: P // PER bytes of PER codes each; the codes of dead lanes are 0 (the padding bits)
    PER: tl.constexpr = 8 // BITS
    code = tl.where(live, code, 0)
    shifts = tl.arange(0, PER) * BITS
    packed = tl.sum(tl.reshape(code, (P // PER, PER)) << shifts[None, :], axis=1)
    byte_lane = tl.arange(0, P // PER)
    nbytes = (n * BITS + 7) // 8
    at = j * (BUCKET * BITS // 8) + byte_lane
    tl.store(codes_ptr + at, packed.to(tl.uint8), mask=(byte_lane < BUCKET * BITS // 8) & (at < nbytes))
    if HAS_E:
        e_new = (e * beta + p) - q
        tl.store(e_ptr + offs, e_new, mask=live)
        ef = tl.sum(tl.where(live, e_new * e_new, 0.0), axis=0)
    else:
        ef = 0.0
    if HAS_T:
        t_old = tl.load(target_ptr + offs, mask=live, other=0.0)
        tl.store(target_ptr + offs, t_old - q, mask=live)
    if HAS_V:
        tl.store(values_ptr + offs, q, mask=live)
    diff = tl.where(live, q - v, 0.0)
    tl.store(stats_ptr + 4 * j, tl.sum(diff * diff, axis=0))
    tl.store(stats_ptr + 4 * j + 1, tl.sum(tl.where(live, v * v, 0.0), axis=0))
    tl.store(stats_ptr + 4 * j + 2, ef)
    tl.store(stats_ptr + 4 * j + 3, kept.to(tl.float32))


@triton.jit
def decode_kernel(
    codes_ptr,
    code_stride,
    scales_ptr,
    out_ptr,
    bad_ptr,
    n,
    nmsg,
    levels,
    KIND: tl.constexpr,
    BUCKET: tl.constexpr,
    P: tl.constexpr,
    BITS: tl.constexpr,
    MODE: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64)
    nb = (n + BUCKET - 1) // BUCKET
    lane = tl.arange(0, P)
    offs = j * BUCKET + lane
    live = (lane < BUCKET) & (offs < n)
    PER: tl.constexpr = 8 // BITS
    byte_lane = tl.arange(0, P // PER)
    nbytes = (n * BITS + 7) // 8
    at = j * (BUCKET * BITS // 8) + byte_lane
    byte_live = (byte_lane < BUCKET * BITS // 8) & (at < nbytes)
    shifts = tl.arange(0, PER) * BITS
    s = levels.to(tl.float32)
    if KIND == 1:
        top = 2 * levels
    elif KIND == 0:
        top = 1
    else:
        top = 2
    acc = tl.zeros((P,), dtype=tl.float32)
    worst = tl.max(tl.zeros((P,), dtype=tl.int32), axis=0)
    for w in range(nmsg):
        raw = tl.load(codes_ptr + w * code_stride + at, mask=byte_live, other=0).to(tl.int32)
        code = tl.reshape((raw[:, None] >> shifts[None, :]) & ((1 << BITS) - 1), (P,))
        code = tl.where(live, code, 0)
        worst = tl.maximum(worst, tl.max(code, axis=0))
        a = tl.load(scales_ptr + w * nb + j)
        zero = tl.zeros_like(acc)
        if KIND == 0:
            q = tl.where(code == 1, zero + a, zero - a)
        elif KIND == 1:
            q = (code.to(tl.float32) - s) * tl.math.div_rn(a, s)
        else:
            q = (code.to(tl.float32) - 1.0) * a
        if MODE == 0:
            acc = acc + q
        else:
            acc = q
    tl.store(bad_ptr + j, (worst > top).to(tl.int32))
    if MODE == 0:
        tl.store(out_ptr + offs, tl.math.div_rn(acc, nmsg.to(tl.float32)), mask=live)
    elif MODE == 1:
        old = tl.load(out_ptr + offs, mask=live, other=0.0)
        tl.store(out_ptr + offs, old - acc, mask=live)
    elif MODE == 3:
        old = tl.load(out_ptr + offs, mask=live, other=0.0)
        tl.store(out_ptr + offs, old + acc, mask=live)
    else:
        tl.store(out_ptr + offs, acc, mask=live)
