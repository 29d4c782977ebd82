"""numba kernels for the dense bucketed codecs (``sign``, ``uniform``/``ternary``, ``threshold``'s
dense layout): one pass over memory per direction.

Encode (worker uplink, server downlink): for each element of a chunk of whole buckets,

    v = p + alpha * e                      (error feedback; e empty: v = p)
    scale of v's bucket (sum/max in the fixed pairwise tree of ``codecs.base.bucket_sums``)
    code = quantize(v); packed into the message in place
    u = Q(v);  e <- beta * e + p - u;  target -= u;  values <- u      (each when asked for)
    statistics: sum (u - v)^2, sum v^2, sum e^2 (float64, per chunk)

reading p and e once and writing e and the message once. Decode-accumulate sums N messages in
worker order per element (``out = (sum_w Q_w) / N``, ``out -= Q``, ``out = Q``), reading each
message once and writing ``out`` once.

Every float32 operation is the one the torch reference does (``codecs/*.py``), in the same order
and with the same rounding: no fast-math, no fused multiply-add, the same pairwise tree for sums,
``s / r`` as torch's ``(1 / r) * s``. The stochastic codes draw Philox4x32-10 (``codecs.philox``)
by flat element index, so bytes depend on neither the thread count nor the chunking.
The chunk is a multiple of 8 elements and of the bucket: each chunk owns whole bytes of codes and
whole buckets, and chunks run in parallel (numba ``prange``; ``numba.set_num_threads``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

KIND_SIGN, KIND_UNIFORM, KIND_THRESHOLD = 0, 1, 2
MODE_MEAN, MODE_SUBTRACT, MODE_SET = 0, 1, 2

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S8 = np.uint64(8)
_FLT_MAX = np.float32(3.4028234663852886e38)
_TWO_M24 = np.float32(2.0**-24)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 values holding 32-bit words (see ``codecs.philox``)."""
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


@njit(**_JIT)
def _fill_uniforms(u, first, key, step):
    """u[j] = uniform of flat element ``first + j`` (Philox words, 24 bits each, in [0, 1))."""
    n = u.shape[0]
    k0 = np.uint64(key) & _MASK
    k1 = (np.uint64(key) >> _S32) & _MASK
    s0 = np.uint64(step) & _MASK
    s1 = (np.uint64(step) >> _S32) & _MASK
    g0 = first // 4
    g1 = (first + n + 3) // 4
    for g in range(g0, g1):
        gg = np.uint64(g)
        w0, w1, w2, w3 = _philox(gg & _MASK, gg >> _S32, s0, s1, k0, k1)
        base = 4 * g - first
        if base >= 0 and base + 3 < n:
            u[base] = np.float32(w0 >> _S8) * _TWO_M24
            u[base + 1] = np.float32(w1 >> _S8) * _TWO_M24
            u[base + 2] = np.float32(w2 >> _S8) * _TWO_M24
            u[base + 3] = np.float32(w3 >> _S8) * _TWO_M24
        else:
            for j in range(4):
                if 0 <= base + j < n:
                    w = w0 if j == 0 else (w1 if j == 1 else (w2 if j == 2 else w3))
                    u[base + j] = np.float32(w >> _S8) * _TWO_M24


@njit(inline="always", **_JIT)
def _tree_sum(buf, d, width):
    """Pairwise sum of buf[:d] padded with zeros to ``width`` (a power of two): bucket_sums."""
    for k in range(d, width):
        buf[k] = _ZERO
    w = width
    while w > 1:
        h = w // 2
        for k in range(h):
            buf[k] = buf[2 * k] + buf[2 * k + 1]
        w = h
    return buf[0]


@njit(parallel=True, **_JIT)
def encode(
    kind,
    p,
    e,
    alpha,
    beta,
    target,
    values,
    bucket,
    chunk,
    levels,
    l2,
    stochastic,
    kappa,
    linf_reference,
    key,
    step,
    offset,
    bits,
    scales,
    codes,
    stats,
    bad,
):
    """Quantize-and-pack with error feedback; see the module docstring. ``e``, ``target`` and
    ``values`` may be empty (not wanted). ``stats[c] = (err_sq, ref_sq, ef_sq, kept)`` of chunk c
    (kept: threshold's nonzero codes); ``bad[c]`` = the first bucket of chunk c with a non-finite
    input or scale, else -1."""
    n = p.shape[0]
    nchunks = (n + chunk - 1) // chunk
    has_e = e.shape[0] > 0
    has_t = target.shape[0] > 0
    has_v = values.shape[0] > 0
    width = 1
    while width < bucket:
        width *= 2
    s32 = np.float32(levels)
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        m = hi - lo
        v = np.empty(m, dtype=np.float32)
        buf = np.empty(width, dtype=np.float32)
        u = np.empty(m if stochastic else 0, dtype=np.float32)
        if stochastic:
            _fill_uniforms(u, offset + lo, key, step)
        nb_lo = lo // bucket
        nb = (m + bucket - 1) // bucket
        sc = np.empty(nb, dtype=np.float32)  # the bucket's scale as sent
        aux = np.empty(nb, dtype=np.float32)  # uniform: 1/r*s; threshold: tau
        bad[c] = -1
        for b in range(nb):
            b0 = b * bucket
            b1 = min(b0 + bucket, m)
            d = b1 - b0
            finite = True
            for k in range(d):
                x = p[lo + b0 + k]
                if has_e:
                    x = x + e[lo + b0 + k] * alpha
                v[b0 + k] = x
                ax = abs(x)
                if not ax <= _FLT_MAX:
                    finite = False
                buf[k] = x * x if (kind == KIND_UNIFORM and l2) else ax
            if kind == KIND_SIGN:
                r = _tree_sum(buf, d, width) / np.float32(d)
                sc[b] = r
            elif kind == KIND_UNIFORM:
                if l2:
                    r = np.float32(math.sqrt(_tree_sum(buf, d, width)))
                else:
                    r = _ZERO
                    for k in range(d):
                        if buf[k] > r:
                            r = buf[k]
                sc[b] = r
                aux[b] = (_ONE / r) * s32 if r > _ZERO else _ZERO
            else:  # threshold: reference (max or mean), threshold tau, mean of the kept
                if linf_reference:
                    r = _ZERO
                    for k in range(d):
                        if buf[k] > r:
                            r = buf[k]
                else:
                    r = _tree_sum(buf, d, width) / np.float32(d)
                tau = np.float32(kappa) * r
                count = 0
                for k in range(d):
                    ax = abs(v[b0 + k])
                    keep = ax >= tau and ax > _ZERO
                    buf[k] = ax if keep else _ZERO
                    count += 1 if keep else 0
                sc[b] = _tree_sum(buf, d, width) / np.float32(max(count, 1))
                aux[b] = tau
                if not r <= _FLT_MAX:
                    finite = False
            if not finite or not sc[b] <= _FLT_MAX:
                if bad[c] < 0:
                    bad[c] = nb_lo + b
            scales[nb_lo + b] = sc[b]
        # codes, values and error feedback, 8 codes (``bits`` bytes) at a time
        err = 0.0
        ref = 0.0
        efs = 0.0
        kept = 0
        word = np.uint64(0)
        cnt = 0
        byte = lo * bits // 8
        for b in range(nb):
            b0 = b * bucket
            b1 = min(b0 + bucket, m)
            a = sc[b]
            step_val = a / s32 if kind == KIND_UNIFORM else _ZERO
            for k in range(b0, b1):
                x = v[k]
                if kind == KIND_SIGN:
                    code = 1 if x >= _ZERO else 0
                    q = a if x >= _ZERO else -a
                elif kind == KIND_UNIFORM:
                    t = abs(x) * aux[b]
                    if stochastic:
                        lvl = np.floor(t + u[k])
                    else:
                        lvl = np.floor(t + _HALF)
                    lvl = min(max(lvl, _ZERO), s32)
                    li = int(lvl)
                    code = levels - li if x < _ZERO else levels + li
                    q = np.float32(code - levels) * step_val
                else:
                    ax = abs(x)
                    if ax >= aux[b] and ax > _ZERO:
                        code = 2 if x >= _ZERO else 0
                        q = a if x >= _ZERO else -a
                        kept += 1
                    else:
                        code = 1
                        q = _ZERO
                word |= np.uint64(code) << np.uint64(cnt * bits)
                cnt += 1
                if cnt == 8:
                    for j in range(bits):
                        codes[byte + j] = np.uint8((word >> np.uint64(8 * j)) & np.uint64(255))
                    byte += bits
                    word = np.uint64(0)
                    cnt = 0
                diff = q - x
                err += np.float64(diff) * np.float64(diff)
                ref += np.float64(x) * np.float64(x)
                i = lo + k
                if has_e:
                    ne = (e[i] * beta + p[i]) - q
                    e[i] = ne
                    efs += np.float64(ne) * np.float64(ne)
                if has_t:
                    target[i] = target[i] - q
                if has_v:
                    values[i] = q
        if cnt:
            for j in range((cnt * bits + 7) // 8):
                codes[byte + j] = np.uint8((word >> np.uint64(8 * j)) & np.uint64(255))
        stats[c, 0] = err
        stats[c, 1] = ref
        stats[c, 2] = efs
        stats[c, 3] = kept


@njit(parallel=True, **_JIT)
def decode(kind, codes, scales, levels, bits, bucket, chunk, n, out, mode, bad):
    """Decode N messages (row w of ``codes``/``scales``: worker w) and combine them per element in
    worker order: MODE_MEAN ``out = (0 + Q_0 + Q_1 + ...) / N``, MODE_SUBTRACT ``out -= Q_0``,
    MODE_SET ``out = Q_0``. ``bad[c]`` = 1 when chunk c holds a code outside the codec's range."""
    nmsg = codes.shape[0]
    nchunks = (n + chunk - 1) // chunk
    mask = (1 << bits) - 1
    s32 = np.float32(levels)
    top = 2 * levels if kind == KIND_UNIFORM else (1 if kind == KIND_SIGN else 2)
    nbytes = codes.shape[1]
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        acc = np.zeros(hi - lo, dtype=np.float32)
        worst = 0
        for w in range(nmsg):
            for b0 in range(lo, hi, bucket):
                b1 = min(b0 + bucket, hi)
                a = scales[w, b0 // bucket]
                step_val = a / s32 if kind == KIND_UNIFORM else a
                for i in range(b0, b1):
                    bit = i * bits
                    at = bit >> 3
                    word = np.int64(codes[w, at])
                    if at + 1 < nbytes:
                        word |= np.int64(codes[w, at + 1]) << 8
                    code = (word >> (bit & 7)) & mask
                    worst = max(worst, code)
                    if kind == KIND_SIGN:
                        q = a if code else -a
                    elif kind == KIND_UNIFORM:
                        q = np.float32(code - levels) * step_val
                    else:
                        q = np.float32(code - 1) * a
                    if w == 0 and mode != MODE_MEAN:
                        acc[i - lo] = q  # Q itself (keeps a -0.0), as the reference decodes it
                    else:
                        acc[i - lo] = acc[i - lo] + q
        bad[c] = 1 if worst > top else 0
        if mode == MODE_MEAN:
            for i in range(lo, hi):
                out[i] = acc[i - lo] / np.float32(nmsg)
        elif mode == MODE_SUBTRACT:
            for i in range(lo, hi):
                out[i] = out[i] - acc[i - lo]
        else:
            for i in range(lo, hi):
                out[i] = acc[i - lo]
