"""numba kernels for the dense bucketed codecs (``sign``, ``uniform``/``ternary``, ``threshold``'s
dense layout): one pass over memory per direction.

Encode (worker uplink, server downlink), for each element of a chunk of whole buckets:

    v = p + alpha * e                      (error feedback; e empty: v = p)
    scale of v's bucket (sums in the fixed pairwise tree of ``codecs.base.bucket_sums``)
    code = quantize(v), packed into the message in place
    u = Q(v);  e <- beta * e + p - u;  target -= u;  values <- u      (each when asked for)
    statistics: sum (u - v)^2, sum v^2, sum e^2 (float64, per chunk)

reading p and e once and writing e and the message once. Decode-accumulate combines N messages in
worker order per element (``out = (0 + Q_0 + Q_1 + ...) / N``, ``out -= Q_0``, ``out = Q_0``),
reading each message once and writing ``out`` once.

Every float32 operation is the one the torch reference does (``codecs/*.py``), in the same order
and with the same rounding: no fast-math in the arithmetic (the statistics alone are summed with
reassociation), no fused multiply-add, the same folding tree for sums, ``s / r`` as torch's
``(1 / r) * s``. Stochastic codes draw Philox4x32-10 (``codecs.philox``) by flat element index, so
the bytes depend on neither the thread count nor the chunking.

A chunk is a multiple of 8 elements and of the bucket, so it owns whole bytes of codes and whole
buckets; chunks run in parallel (``prange``; ``numba.set_num_threads``). Inside a chunk the work
goes in phases over small arrays that stay in L1 (v, |v|, codes, Q(v)), each a simple loop that
LLVM vectorizes; main memory is touched once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from qtrain.kernels.codec_base import KIND_SIGN, KIND_UNIFORM, MODE_ADD, MODE_MEAN, MODE_SUBTRACT

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


@njit(**_JIT)
def _fill_uniforms(u, first, key, step):
    """u[j] = uniform of flat element ``first + j``: word ``(first + j) % 4`` of Philox4x32-10 of
    counter ``((first + j) // 4, step)`` under ``key``, as ``(word >> 8) * 2^-24``."""
    n = u.shape[0]
    if n == 0:
        return
    k0 = np.uint64(key) & _MASK
    k1 = (np.uint64(key) >> _S32) & _MASK
    s0 = np.uint64(step) & _MASK
    s1 = (np.uint64(step) >> _S32) & _MASK
    g0 = first // 4
    groups = (first + n + 3) // 4 - g0
    words = np.empty(4 * groups, dtype=np.float32)
    for i in range(groups):
        g = np.uint64(g0 + i)
        c0, c1, c2, c3 = g & _MASK, g >> _S32, s0, s1
        a0, a1 = k0, k1
        for _round in range(10):
            p0 = c0 * _M0
            p1 = c2 * _M1
            c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ a0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ a1, p0 & _MASK
            a0 = (a0 + _W0) & _MASK
            a1 = (a1 + _W1) & _MASK
        words[4 * i] = np.float32(c0 >> _S8) * _TWO_M24
        words[4 * i + 1] = np.float32(c1 >> _S8) * _TWO_M24
        words[4 * i + 2] = np.float32(c2 >> _S8) * _TWO_M24
        words[4 * i + 3] = np.float32(c3 >> _S8) * _TWO_M24
    skip = first - 4 * g0
    for j in range(n):
        u[j] = words[skip + j]


@njit(inline="always", **_JIT)
def _fold_sum(buf, d, width):
    """bucket_sums of buf[:d]: zero-pad to ``width`` (a power of two), fold halves together."""
    for k in range(d, width):
        buf[k] = _ZERO
    w = width
    while w > 1:
        w //= 2
        low, high = buf[:w], buf[w : 2 * w]  # slices: plain indices let LLVM vectorize
        for k in range(w):
            low[k] = low[k] + high[k]
    return buf[0]


@njit(inline="always", **_JIT)
def _fold_max(buf, d, width):
    """max of buf[:d] (non-negative values): order does not matter for a maximum."""
    for k in range(d, width):
        buf[k] = _ZERO
    w = width
    while w > 1:
        w //= 2
        low, high = buf[:w], buf[w : 2 * w]
        for k in range(w):
            low[k] = low[k] if low[k] >= high[k] else high[k]
    return buf[0]


@njit(fastmath={"reassoc"}, **_JIT)
def _error_sums(q, v, m):
    """(sum (q - v)^2, sum v^2) in float64: statistics, reassociated so that they vectorize."""
    err = 0.0
    ref = 0.0
    for k in range(m):
        d = np.float64(q[k]) - np.float64(v[k])
        err += d * d
        ref += np.float64(v[k]) * np.float64(v[k])
    return err, ref


@njit(fastmath={"reassoc"}, **_JIT)
def _square_sum(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += np.float64(x[i]) * np.float64(x[i])
    return s


@njit(inline="always", **_JIT)
def _adam_step(gs, m1, m2, vmax, wparams, ac, eps_inside, lo, hi):
    """The Adam direction of elements lo..hi (adam_math.adam_direction, the same roundings)."""
    n = hi - lo
    out = np.empty(n, dtype=np.float32)
    ms, vs = m1[lo:hi], m2[lo:hi]
    b1, omb1, b2, omb2, step_size, rbc2, rbc2sq, eps, wd = (
        ac[0],
        ac[1],
        ac[2],
        ac[3],
        ac[4],
        ac[5],
        ac[6],
        ac[7],
        ac[8],
    )
    g = np.empty(n, dtype=np.float32)
    if wparams.shape[0] > 0:
        xs = wparams[lo:hi]
        for k in range(n):
            g[k] = gs[k] + xs[k] * wd
    else:
        for k in range(n):
            g[k] = gs[k]
    for k in range(n):
        ms[k] = ms[k] * b1 + g[k] * omb1
        vs[k] = vs[k] * b2 + (g[k] * g[k]) * omb2
    if vmax.shape[0] > 0:
        xm = vmax[lo:hi]
        for k in range(n):
            xm[k] = max(xm[k], vs[k])
        vs = xm
    if eps_inside:
        for k in range(n):
            out[k] = (ms[k] / np.sqrt(vs[k] / rbc2sq + eps)) * step_size
    else:
        for k in range(n):
            out[k] = (ms[k] / (np.sqrt(vs[k]) / rbc2 + eps)) * step_size
    return out


@njit(inline="always", **_JIT)
def _with_feedback(ps, e, alpha, lo, hi, v):
    """v = p + alpha * e over one chunk (``e`` empty: v = p)."""
    if e.shape[0] > 0:
        es = e[lo:hi]
        for k in range(hi - lo):
            v[k] = ps[k] + es[k] * alpha
    else:
        for k in range(hi - lo):
            v[k] = ps[k]


@njit(inline="always", **_JIT)
def _apply_quantized(ps, q, v, e, beta, target, values, lo, hi, row):
    """Given u = Q(v) of one chunk (``q``): e <- beta e + p - u, target -= u, values = u (each
    array empty when not wanted), and row[:3] = (sum (u - v)^2, sum v^2, sum e^2)."""
    m = hi - lo
    if e.shape[0] > 0:
        es = e[lo:hi]
        for k in range(m):
            es[k] = (es[k] * beta + ps[k]) - q[k]
        row[2] = _square_sum(es)
    else:
        row[2] = 0.0
    if target.shape[0] > 0:
        ts = target[lo:hi]
        for k in range(m):
            ts[k] = ts[k] - q[k]
    if values.shape[0] > 0:
        vs = values[lo:hi]
        for k in range(m):
            vs[k] = q[k]
    err, ref_sq = _error_sums(q, v, m)
    row[0] = err
    row[1] = ref_sq


@njit(inline="always", **_JIT)
def _combine_into(os, acc, mode, nmsg):
    """The decoders' last step over one chunk: MODE_MEAN os = acc / N, MODE_SUBTRACT os -= acc,
    MODE_ADD os += acc, MODE_SET os = acc."""
    if mode == MODE_MEAN:
        div = np.float32(nmsg)
        for k in range(os.shape[0]):
            os[k] = acc[k] / div
    elif mode == MODE_SUBTRACT:
        for k in range(os.shape[0]):
            os[k] = os[k] - acc[k]
    elif mode == MODE_ADD:
        for k in range(os.shape[0]):
            os[k] = os[k] + acc[k]
    else:
        for k in range(os.shape[0]):
            os[k] = acc[k]


@njit(inline="always", **_JIT)
def _pack(codes, m, bits, out, byte0):
    """Pack codes[:m] (codes[m:] must be zero up to a multiple of 8) LSB-first into out[byte0:]:
    8 codes (one uint64 of code bytes) become ``bits`` bytes."""
    groups = (m + 7) // 8
    words = codes[: 8 * groups].view(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    b = np.uint64(bits)
    nbytes = (m * bits + 7) // 8
    dst = out[byte0 : byte0 + nbytes]
    full = nbytes // bits  # groups whose ``bits`` bytes are all in the message
    for j in range(groups):
        w = words[j]
        packed = np.uint64(0)
        for t in range(8):
            packed |= ((w >> np.uint64(8 * t)) & mask) << (b * np.uint64(t))
        if bits == 1:
            if j < nbytes:
                dst[j] = np.uint8(packed & np.uint64(255))
        elif j < full:
            for k in range(bits):
                dst[j * bits + k] = np.uint8((packed >> np.uint64(8 * k)) & np.uint64(255))
        else:
            for k in range(bits):
                if j * bits + k < nbytes:
                    dst[j * bits + k] = np.uint8((packed >> np.uint64(8 * k)) & np.uint64(255))


@njit(inline="always", **_JIT)
def _unpack(src, byte0, m, bits, codes):
    """codes[:m] from the LSB-first packed bytes src[byte0:]; returns the largest code."""
    groups = (m + 7) // 8
    words = codes[: 8 * groups].view(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    b = np.uint64(bits)
    nbytes = (m * bits + 7) // 8
    data = src[byte0 : byte0 + nbytes]
    for j in range(groups):
        packed = np.uint64(0)
        for k in range(bits):
            if j * bits + k < nbytes:
                packed |= np.uint64(data[j * bits + k]) << np.uint64(8 * k)
        w = np.uint64(0)
        for t in range(8):
            w |= ((packed >> (b * np.uint64(t))) & mask) << np.uint64(8 * t)
        words[j] = w
    top = 0
    for k in range(m):
        top = max(top, codes[k])
    return top


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
    adam,
    m1,
    m2,
    vmax,
    wparams,
    ac,
    eps_inside,
):
    """Quantize-and-pack with error feedback; see the module docstring. ``e``, ``target`` and
    ``values`` may be empty (not wanted). With ``adam``, ``p`` is the gradient and the local Adam
    step of ``algorithms.adam_math`` runs first: g = p + wparams * wd (wparams empty: no weight
    decay), moments m1, m2 (and vmax for AMSGrad, else empty) updated in place, p <- the Adam
    direction; ``ac`` = float32 (beta1, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1^t),
    sqrt(1 - beta2^t), its square, eps, wd). ``stats[c] = (err_sq, ref_sq, ef_sq, kept)`` of chunk c
    (kept: threshold's nonzero codes); ``bad[c]`` = the first bucket of chunk c with a non-finite
    input or scale, else -1."""
    n = p.shape[0]
    nchunks = (n + chunk - 1) // chunk
    width = 1
    while width < bucket:
        width *= 2
    s32 = np.float32(levels)
    kap = np.float32(kappa)
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        m = hi - lo
        # slices of this chunk: loops index them from 0, which LLVM vectorizes
        if adam:
            ps = _adam_step(p[lo:hi], m1, m2, vmax, wparams, ac, eps_inside, lo, hi)
        else:
            ps = p[lo:hi]
        v = np.empty(m, dtype=np.float32)
        q = np.empty(m, dtype=np.float32)
        buf = np.empty(width, dtype=np.float32)
        cl = np.zeros(8 * ((m + 7) // 8), dtype=np.uint8)
        u = np.empty(m if stochastic else 0, dtype=np.float32)
        if stochastic:
            _fill_uniforms(u, offset + lo, key, step)
        _with_feedback(ps, e, alpha, lo, hi, v)
        bad[c] = -1
        kept = 0
        for b0 in range(0, m, bucket):
            d = min(bucket, m - b0)
            j = (lo + b0) // bucket
            vb, qb, cb = v[b0 : b0 + d], q[b0 : b0 + d], cl[b0 : b0 + d]
            nonfinite = 0
            for k in range(d):
                a = abs(vb[k])
                nonfinite += 0 if a <= _FLT_MAX else 1
                buf[k] = a
            if kind == KIND_SIGN:
                r = _fold_sum(buf, d, width) / np.float32(d)
                for k in range(d):
                    x = vb[k]
                    cb[k] = 1 if x >= _ZERO else 0
                    qb[k] = r if x >= _ZERO else -r
            elif kind == KIND_UNIFORM:
                if l2:
                    for k in range(d):
                        buf[k] = vb[k] * vb[k]
                    r = np.float32(math.sqrt(_fold_sum(buf, d, width)))
                else:
                    r = _fold_max(buf, d, width)
                inv = (_ONE / r) * s32 if r > _ZERO else _ZERO
                tiny = np.isinf(inv)  # subnormal scale: s / r overflows, divide first (as the reference)
                step_val = r / s32
                if stochastic:
                    ub = u[b0 : b0 + d]
                    for k in range(d):
                        x = vb[k]
                        t = (abs(x) / r) * s32 if tiny else abs(x) * inv
                        lvl = min(max(np.floor(t + ub[k]), _ZERO), s32)
                        code = s32 - lvl if x < _ZERO else s32 + lvl
                        cb[k] = np.uint8(code)
                        qb[k] = (code - s32) * step_val
                else:
                    for k in range(d):
                        x = vb[k]
                        t = (abs(x) / r) * s32 if tiny else abs(x) * inv
                        lvl = min(max(np.floor(t + _HALF), _ZERO), s32)
                        code = s32 - lvl if x < _ZERO else s32 + lvl
                        cb[k] = np.uint8(code)
                        qb[k] = (code - s32) * step_val
            else:  # threshold: reference (max or mean), threshold tau, mean of the kept
                if linf_reference:
                    ref = _fold_max(buf, d, width)
                else:
                    ref = _fold_sum(buf, d, width) / np.float32(d)
                tau = kap * ref
                count = 0
                for k in range(d):
                    ax = abs(vb[k])
                    keep = ax >= tau and ax > _ZERO
                    buf[k] = ax if keep else _ZERO
                    count += 1 if keep else 0
                r = _fold_sum(buf, d, width) / np.float32(max(count, 1))
                kept += count
                if not ref <= _FLT_MAX:
                    nonfinite += 1
                for k in range(d):
                    x = vb[k]
                    ax = abs(x)
                    keep = ax >= tau and ax > _ZERO
                    cb[k] = (2 if x >= _ZERO else 0) if keep else 1
                    qb[k] = (r if x >= _ZERO else -r) if keep else _ZERO
            if (nonfinite or not r <= _FLT_MAX) and bad[c] < 0:
                bad[c] = j
            scales[j] = r
        _apply_quantized(ps, q, v, e, beta, target, values, lo, hi, stats[c])
        stats[c, 3] = kept
        _pack(cl, m, bits, codes, lo * bits // 8)


@njit(inline="always", **_JIT)
def _expand(data, nbytes, units_of, units, per):
    """units[per*j + t] = units_of[data[j], t] for 4, 2 or 1 codes per byte, with the row length a
    literal in each branch so that the copy unrolls (8 per byte: the caller's own loop is faster)."""
    flat = units_of.ravel()
    if per == 4:
        for j in range(nbytes):
            r = np.int64(data[j]) * 4
            for t in range(4):
                units[4 * j + t] = flat[r + t]
    elif per == 2:
        for j in range(nbytes):
            r = np.int64(data[j]) * 2
            units[2 * j] = flat[r]
            units[2 * j + 1] = flat[r + 1]
    else:
        for j in range(nbytes):
            units[j] = flat[np.int64(data[j])]


def unit_table(kind: int, bits: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """For widths 1, 2, 4, 8: the ``unit`` of every code of every byte value, ``(256, 8 // bits)``
    float32, and each byte's largest code. Q = unit * a (sign: +-1; threshold: code - 1) or
    unit * (r / s) (uniform: code - s), the reference's own product. Other widths: empty tables."""
    if 8 % bits:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    per = 8 // bits
    byte = np.arange(256)[:, None]
    code = (byte >> (bits * np.arange(per))[None, :]) & ((1 << bits) - 1)
    if kind == KIND_SIGN:
        units = np.where(code == 1, 1.0, -1.0)
    elif kind == KIND_UNIFORM:
        units = code - float(levels)
    else:
        units = code - 1.0
    return units.astype(np.float32), code.max(axis=1).astype(np.int64)


@njit(parallel=True, **_JIT)
def decode(kind, codes, scales, levels, bits, bucket, chunk, n, out, mode, units_of, top_of, bad):
    """Decode N messages (row w of ``codes``/``scales``: worker w) and combine them per element in
    worker order: MODE_MEAN ``out = (0 + Q_0 + Q_1 + ...) / N``, MODE_SUBTRACT ``out -= Q_0``,
    MODE_ADD ``out += Q_0`` (the reference's ``decode_add_``), MODE_SET ``out = Q_0``.
    ``units_of``/``top_of``: :func:`unit_table` (empty: unpack bit by bit).
    ``bad[c]`` = 1 when chunk c holds a code outside the codec's range."""
    nmsg = codes.shape[0]
    nchunks = (n + chunk - 1) // chunk
    s32 = np.float32(levels)
    top = 2 * levels if kind == KIND_UNIFORM else (1 if kind == KIND_SIGN else 2)
    per = units_of.shape[1]
    table = units_of.shape[0] > 0
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        m = hi - lo
        nbytes = (m * bits + 7) // 8
        acc = np.zeros(m, dtype=np.float32)
        units = np.empty(max(per * nbytes, m), dtype=np.float32)
        cl = np.zeros(0 if table else 8 * ((m + 7) // 8), dtype=np.uint8)
        worst = 0
        for w in range(nmsg):
            if table:  # one table row per byte: the units of its codes
                data = codes[w, lo * bits // 8 : lo * bits // 8 + nbytes]
                if per == 8:
                    for j in range(nbytes):
                        byte = data[j]
                        worst = max(worst, top_of[byte])
                        row = units_of[byte]
                        for t in range(per):
                            units[per * j + t] = row[t]
                else:
                    for j in range(nbytes):
                        worst = max(worst, top_of[data[j]])
                    _expand(data, nbytes, units_of, units, per)
            else:
                worst = max(worst, _unpack(codes[w], lo * bits // 8, m, bits, cl))
                for k in range(m):
                    units[k] = np.float32(cl[k]) - s32
            first = w == 0 and mode != MODE_MEAN  # Q itself (keeps a -0.0), as the reference decodes
            for b0 in range(0, m, bucket):
                d = min(bucket, m - b0)
                a = scales[w, (lo + b0) // bucket]
                mult = a / s32 if kind == KIND_UNIFORM else a
                ab, ub = acc[b0 : b0 + d], units[b0 : b0 + d]
                if first:
                    for k in range(d):
                        ab[k] = ub[k] * mult
                else:
                    for k in range(d):
                        ab[k] = ab[k] + ub[k] * mult
        bad[c] = 1 if worst > top else 0
        _combine_into(out[lo:hi], acc, mode, nmsg)


# ---------------------------------------------------------------------------------------------
# The float codecs: none (fp32), fp16, bf16. No buckets, no scales: each element is sent as
# itself rounded to nearest even, so the kernel's job is the error feedback around that rounding.

FMT_NONE, FMT_FP16, FMT_BF16 = 0, 1, 2
_SCALE_TO_INF = np.float32(2.0**112)
_SCALE_TO_ZERO = np.float32(2.0**-110)


@njit(inline="always", **_JIT)
def _fp16_bits(v, out16, half_to_float, q):
    """IEEE binary16 bits of float32 ``v`` (a chunk), round to nearest even, and their float32
    values: the float trick of the FP16 library behind torch's conversion (NaN -> sign | 0x7E00,
    overflow -> inf), written as whole-chunk loops over bit views so that they vectorize."""
    m = v.shape[0]
    vw = v.view(np.uint32)
    base = np.empty(m, dtype=np.float32)
    bias = np.empty(m, dtype=np.uint32)
    for k in range(m):
        base[k] = (abs(v[k]) * _SCALE_TO_INF) * _SCALE_TO_ZERO
        b = ((vw[k] + vw[k]) & np.uint32(0xFFFFFFFF)) & np.uint32(0xFF000000)
        b = max(b, np.uint32(0x71000000))
        bias[k] = (b >> np.uint32(1)) + np.uint32(0x07800000)
    bf = bias.view(np.float32)
    for k in range(m):
        base[k] = bf[k] + base[k]
    bits = base.view(np.uint32)
    for k in range(m):
        w = vw[k]
        shl1 = (w + w) & np.uint32(0xFFFFFFFF)
        nonsign = ((bits[k] >> np.uint32(13)) & np.uint32(0x7C00)) + (bits[k] & np.uint32(0x0FFF))
        h = ((w & np.uint32(0x80000000)) >> np.uint32(16)) | (
            np.uint32(0x7E00) if shl1 > np.uint32(0xFF000000) else nonsign
        )
        out16[k] = np.uint16(h)
        q[k] = half_to_float[h]


@njit(parallel=True, **_JIT)
def encode_float(fmt, p, e, alpha, beta, target, values, half_to_float, out32, out16, stats, chunk):
    """Float codecs with error feedback: v = p + alpha e, sent = round(v) (fp32: v itself; fp16,
    bf16: round to nearest even, as torch's ``.to``), u = float32(sent), e <- beta e + p - u,
    target -= u, values = u; ``stats[c]`` = (sum (u - v)^2, sum v^2, sum e^2, 0) of chunk c."""
    n = p.shape[0]
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        m = hi - lo
        ps = p[lo:hi]
        v = np.empty(m, dtype=np.float32)
        q = np.empty(m, dtype=np.float32)
        _with_feedback(ps, e, alpha, lo, hi, v)
        if fmt == FMT_NONE:
            dst = out32[lo:hi]
            for k in range(m):
                dst[k] = v[k]
                q[k] = v[k]
        else:
            dst16 = out16[lo:hi]
            vw = v.view(np.uint32)
            qw = q.view(np.uint32)
            if fmt == FMT_BF16:
                for k in range(m):
                    w = vw[k]
                    if v[k] != v[k]:  # NaN: torch's vectorized conversion writes 0xFFFF
                        h = np.uint32(0xFFFF)
                    else:
                        h = (
                            (w + np.uint32(0x7FFF) + ((w >> np.uint32(16)) & np.uint32(1)))
                            & np.uint32(0xFFFFFFFF)
                        ) >> np.uint32(16)
                    dst16[k] = np.uint16(h)
                    qw[k] = h << np.uint32(16)
            else:
                _fp16_bits(v, dst16, half_to_float, q)
        _apply_quantized(ps, q, v, e, beta, target, values, lo, hi, stats[c])
        stats[c, 3] = 0.0


@njit(parallel=True, **_JIT)
def decode_float(fmt, rows32, rows16, half_to_float, n, chunk, out, mode):
    """Combine N float messages (rows of ``rows32`` for fp32, ``rows16`` for fp16/bf16 bits) as
    :func:`decode` does: mean in worker order, subtract, add or set."""
    nmsg = rows32.shape[0] if fmt == FMT_NONE else rows16.shape[0]
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        m = hi - lo
        acc = np.zeros(m, dtype=np.float32)
        aw = acc.view(np.uint32)
        q = np.empty(m, dtype=np.float32)
        qw = q.view(np.uint32)
        for w in range(nmsg):
            if fmt == FMT_NONE:
                src = rows32[w, lo:hi]
                for k in range(m):
                    q[k] = src[k]
            elif fmt == FMT_BF16:
                src16 = rows16[w, lo:hi]
                for k in range(m):
                    qw[k] = np.uint32(src16[k]) << np.uint32(16)
            else:
                src16 = rows16[w, lo:hi]
                for k in range(m):
                    q[k] = half_to_float[src16[k]]
            if w == 0 and mode != MODE_MEAN:
                for k in range(m):
                    aw[k] = qw[k]  # the bits themselves: keeps a -0.0 and a NaN's payload
            else:
                for k in range(m):
                    acc[k] = acc[k] + q[k]
        _combine_into(out[lo:hi], acc, mode, nmsg)
