"""The Triton kernels against the torch reference, byte for byte, run on CPU tensors by Triton's
interpreter (``TRITON_INTERPRET=1``): the CI machine has no GPU. ``make test-gpu`` runs the same
comparisons compiled on a GPU (tests/test_gpu.py)."""

import os

import pytest
import torch
from codec_cases import case_id, wide_range_floats

if not os.environ.get("QTRAIN_TRITON_COMPILED"):
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from qtrain.codecs import CounterStream, get_codec  # noqa: E402
from qtrain.kernels.triton_codec import TritonDenseCodec, triton_supports  # noqa: E402

DEVICE = "cuda" if os.environ.get("QTRAIN_TRITON_COMPILED") else "cpu"
CASES = [
    ("sign", {"bucket": 64}),
    ("sign", {"bucket": 24}),  # not a power of two: a 32-lane block with dead lanes
    ("ternary", {"bucket": 64}),
    ("uniform", {"bits": 2, "bucket": 8}),
    ("uniform", {"bits": 4, "bucket": 100}),
    ("uniform", {"bits": 8, "bucket": 64, "norm": "l2"}),
    ("uniform", {"bits": 2, "bucket": 64, "rounding": "nearest", "norm": "l2"}),
    ("threshold", {"bucket": 64, "layout": "dense"}),
    ("threshold", {"bucket": 32, "reference": "linf", "kappa": 0.5}),
]


def data(n, seed, sparse=False):
    return wide_range_floats(n, seed, zeros=0.6 if sparse else 0.0).to(DEVICE)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_encode_with_error_feedback_matches_the_reference(case):
    name, params = case
    codec = get_codec(name, **params)
    fast = TritonDenseCodec(codec)
    for n in (1, 37, 700):
        p = data(n, n, sparse=name == "threshold")
        e0 = data(n, n + 1) * 0.1
        rng = CounterStream(2**40 + 7, 5, codec.bucket * 2)
        for alpha, beta in ((1.0, 1.0), (0.5, 0.9)):
            v = p + (e0 if alpha == 1 else e0 * alpha)
            want, u = codec.quantize(v, rng)
            want_e = e0.mul(beta).add_(p).sub_(u)
            e, target, values = e0.clone(), data(n, 9), torch.full((n,), float("nan"), device=DEVICE)
            want_target = target - u
            got, _ = fast.encode_ef(p, e, alpha, beta, rng, target=target, values=values)
            assert bytes(got.cpu().numpy()) == bytes(want.cpu().numpy()), (n, alpha)
            assert torch.equal(e, want_e) and torch.equal(values, u) and torch.equal(target, want_target)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_triton_tiny_bucket_scales_match_the_reference(bits):
    """Subnormal bucket scales, where s / r overflows: divided first on both paths."""
    codec = get_codec("uniform", bits=bits, bucket=64)
    fast = TritonDenseCodec(codec)
    x = torch.randn(256, generator=torch.Generator().manual_seed(5))
    for j, top in enumerate([1e-38, 5e-39, 1.4e-45]):
        block = x[64 * (j + 1) : 64 * (j + 2)]
        block.mul_(top / block.abs().max())
        block[::3] = 0.0
    x = x.to(DEVICE)
    rng = CounterStream(11, 3, 0)
    want, u = codec.quantize(x, rng)
    e = torch.zeros_like(x)
    got, _ = fast.encode_ef(x, e, 1.0, 1.0, rng)
    assert bytes(got.cpu().numpy()) == bytes(want.cpu().numpy())
    assert torch.isfinite(u).all() and torch.equal(e, x - u)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_triton_decode_combine_matches_the_reference(case):
    name, params = case
    codec = get_codec(name, **params)
    fast = TritonDenseCodec(codec)
    n = 300
    msgs = [codec.encode(data(n, w, sparse=True), CounterStream(w, 3)) for w in range(3)]
    if any(codec.decode(m).numel() != n for m in msgs):
        pytest.skip("layout")
    want = torch.zeros(n, device=DEVICE)
    for m in msgs:
        codec.decode_add_(m, want)
    want.div_(3)
    assert torch.equal(fast.decode_combine(msgs, torch.empty(n, device=DEVICE), "mean"), want)
    base = data(n, 5)
    got = fast.decode_combine(msgs[:1], base.clone(), "subtract")
    assert torch.equal(got, base - codec.decode(msgs[0]))
    assert torch.equal(
        fast.decode_combine(msgs[:1], torch.empty(n, device=DEVICE), "set"), codec.decode(msgs[0])
    )
    got = fast.decode_combine(msgs[1:2], base.clone(), "add")
    assert torch.equal(got, codec.decode_add_(msgs[1], base.clone()))


def test_unsupported_layouts_are_left_to_the_reference():
    assert not triton_supports(get_codec("uniform", bits=3))  # codes across byte boundaries
    assert not triton_supports(get_codec("sign", bucket=12))  # 12 bits: buckets share a byte
    assert not triton_supports(get_codec("topk", ratio=0.1))
    assert triton_supports(get_codec("sign")) and triton_supports(get_codec("threshold"))


PTX_CHECK = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qtrain.kernels import triton_dense as T

enc = dict(p_ptr="*fp32", e_ptr="*fp32", target_ptr="*fp32", values_ptr="*fp32", scales_ptr="*fp32",
           codes_ptr="*u8", stats_ptr="*fp32", bad_ptr="*i32", n="i64", alpha="fp32", beta="fp32",
           levels="i32", kappa="fp32", key="i64", step_lo="i64", step_hi="i64", offset="i64")
dec = dict(codes_ptr="*u8", code_stride="i64", scales_ptr="*fp32", out_ptr="*fp32", bad_ptr="*i32",
           n="i64", nmsg="i32", levels="i32")
found = []
ENCODE_CASES = ((0, 1, False, False), (1, 2, True, False), (1, 8, False, True), (2, 2, False, False))
for kind, bits, stochastic, l2 in ENCODE_CASES:
    c = dict(KIND=kind, BUCKET=512, P=512, LOG2P=9, BITS=bits, HAS_E=True, HAS_T=True, HAS_V=True,
             L2=l2, STOCHASTIC=stochastic, LINF_REFERENCE=False)
    sig = {**enc, **{k: "constexpr" for k in c}}
    found.append(triton.compile(ASTSource(T.encode_kernel, sig, c), target=GPUTarget("cuda", 90, 32),
                                options={"enable_fp_fusion": False}).asm["ptx"])
for kind, bits, mode in ((0, 1, 0), (1, 4, 1), (2, 2, 2)):
    c = dict(KIND=kind, BUCKET=512, P=512, BITS=bits, MODE=mode)
    sig = {**dec, **{k: "constexpr" for k in c}}
    found.append(triton.compile(ASTSource(T.decode_kernel, sig, c), target=GPUTarget("cuda", 90, 32),
                                options={"enable_fp_fusion": False}).asm["ptx"])
text = "\n".join(found)
print(json.dumps({k: text.count(k) for k in ("fma.", "div.full", "div.approx", "sqrt.approx", "rsqrt",
                                              "div.rn.f32", "sqrt.rn.f32")}))
"""


def test_compiled_kernels_use_only_exact_float_instructions():
    """Compile the kernels for an H100 (sm_90) without a GPU and read the PTX: no fused
    multiply-add, no approximate division or square root, the correctly rounded ones present.
    (The interpreter computes exactly whatever the kernel says; this catches a kernel that would
    round differently once compiled.)"""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", PTX_CHECK], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode and "ptxas" in done.stderr:
        pytest.skip(f"this Triton cannot compile for sm_90 here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["fma."] == counts["div.full"] == counts["div.approx"] == 0, counts
    assert counts["sqrt.approx"] == counts["rsqrt"] == 0, counts
    assert counts["div.rn.f32"] > 0 and counts["sqrt.rn.f32"] > 0, counts
