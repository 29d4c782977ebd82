"""The numba kernels against the torch reference codecs, byte for byte and bit for bit: messages,
Q(v), error-feedback buffers, subtract targets, decoded sums and decode_add_, over every dense codec
and width,
several buckets (powers of two and not), ragged tails, offsets into the Philox stream and steps."""

import pytest
import torch
from codec_cases import case_id, wide_range_floats
from hypothesis import given, settings
from hypothesis import strategies as st

from qtrain.codecs import CounterStream, WireFormatError, get_codec
from qtrain.codecs.philox import uniforms

pytest.importorskip("numba")
from qtrain.kernels import kernel_codec  # noqa: E402
from qtrain.kernels.cpu_dense import _fill_uniforms  # noqa: E402

CODECS = [
    ("sign", {}),
    ("ternary", {}),
    *[("uniform", {"bits": b}) for b in range(2, 9)],
    ("uniform", {"bits": 4, "norm": "l2"}),
    ("uniform", {"bits": 2, "rounding": "nearest"}),
    ("uniform", {"bits": 3, "norm": "l2", "rounding": "nearest"}),
    ("threshold", {"layout": "dense"}),
    ("threshold", {"reference": "linf", "kappa": 0.5, "layout": "dense"}),
    ("threshold", {"kappa": 2.0}),
]
FLOAT_CODECS = [("none", {}), ("fp16", {}), ("bf16", {})]
BUCKETS = [1, 3, 8, 100, 512]
SIZES = [0, 1, 7, 8, 9, 1000, 20_011]


def ids_of(params):
    return "-".join(f"{k}={v}" for k, v in params.items())


def data(n, seed, sparse=False):
    return wide_range_floats(n, seed, zeros=0.7 if sparse else 0.0)


def reference_step(codec, p, e, alpha, beta, rng):
    """What the engine's torch path does: v = p + alpha e; (message, u) = quantize; e update."""
    v = p if e is None else p + (e if alpha == 1 else e * alpha)
    packed, u = codec.quantize(v, rng)
    new_e = None if e is None else e.mul(beta).add_(p).sub_(u)
    return packed, u, v, new_e


@pytest.mark.parametrize("case", CODECS, ids=case_id)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_encode_with_error_feedback_matches_the_reference(case, bucket):
    name, params = case
    codec = get_codec(name, bucket=bucket, **params)
    fast = kernel_codec(codec, "cpu", "numba")
    for n in SIZES:
        for ef, alpha, beta in ((False, 1.0, 1.0), (True, 1.0, 1.0), (True, 0.7, 0.9)):
            p = data(n, n + 1, sparse=name == "threshold")
            e0 = data(n, n + 2) * 0.1 if ef else None
            rng = CounterStream(key=12345 + n, step=7, offset=bucket * 3)
            want, u, v, want_e = reference_step(codec, p, e0, alpha, beta, rng)
            e = None if e0 is None else e0.clone()
            target = data(n, n + 3)
            want_target = target - u
            values = torch.full((n,), float("nan"))
            got, sums = fast.encode_ef(p, e, alpha, beta, rng, target=target, values=values)
            assert bytes(got.numpy()) == bytes(want.numpy()), (n, ef)
            assert torch.equal(values, u) and torch.equal(target, want_target)
            assert ef == (e is not None) and (e is None or torch.equal(e, want_e))
            err_sq, ref_sq, ef_sq = sums
            assert err_sq == pytest.approx(float(((u.double() - v.double()) ** 2).sum()), rel=1e-9, abs=1e-30)
            assert ref_sq == pytest.approx(float((v.double() ** 2).sum()), rel=1e-9, abs=1e-30)
            if ef:
                assert ef_sq == pytest.approx(float((want_e.double() ** 2).sum()), rel=1e-9, abs=1e-30)
            else:
                assert ef_sq is None


@pytest.mark.parametrize("case", CODECS, ids=case_id)
@pytest.mark.parametrize("bucket", [3, 512])
def test_decode_combine_matches_the_reference(case, bucket):
    name, params = case
    codec = get_codec(name, bucket=bucket, **params)
    fast = kernel_codec(codec, "cpu", "numba")
    for n in (1, 9, 5000):
        msgs = [codec.encode(data(n, 10 * w + n, sparse=True), CounterStream(w, 1)) for w in range(4)]
        want = torch.zeros(n)
        for m in msgs:
            codec.decode_add_(m, want)
        want.div_(4)
        got = torch.full((n,), float("nan"))
        assert torch.equal(fast.decode_combine(msgs, got, "mean"), want)
        base = data(n, 99)
        assert torch.equal(
            fast.decode_combine(msgs[:1], base.clone(), "subtract"), base - codec.decode(msgs[0])
        )
        assert torch.equal(fast.decode_combine(msgs[:1], got, "set"), codec.decode(msgs[0]))
        base[::7] = -0.0  # -0.0 + 0.0 is +0.0 in both
        want = codec.decode_add_(msgs[1], base.clone())
        assert bytes(fast.decode_combine(msgs[1:2], base.clone(), "add").numpy()) == bytes(want.numpy())


def test_decode_combine_reads_rows_of_one_receive_buffer():
    """The server's uplinks arrive as rows of one array: the kernel reads them in place."""
    codec = get_codec("uniform", bits=4, bucket=64)
    fast = kernel_codec(codec, "cpu", "numba")
    n, frame = 3000, codec.wire_bytes(3000) + 24
    rows = torch.zeros(3, frame, dtype=torch.uint8)
    msgs = []
    for w in range(3):
        m = codec.encode(data(n, w), CounterStream(5, 2))
        rows[w, 24 : 24 + m.numel()] = m
        msgs.append(rows[w, 24 : 24 + m.numel()])
    want = sum(codec.decode(m) for m in [rows[w, 24:].clone() for w in range(3)]) / 3
    ref = torch.zeros(n)
    for m in msgs:
        codec.decode_add_(m, ref)
    got = fast.decode_combine(msgs, torch.empty(n), "mean")
    assert torch.equal(got, ref.div_(3)) and torch.allclose(got, want)


def test_threshold_auto_layout_picks_sparse_like_the_reference():
    codec = get_codec("threshold", kappa=8.0, bucket=64)
    fast = kernel_codec(codec, "cpu", "numba")
    x = data(10_000, 3, sparse=True)
    want = codec.encode(x)
    got, _ = fast.encode_ef(x, out=torch.empty(codec.wire_bytes(10_000) + 100, dtype=torch.uint8))
    assert got.numel() < codec.wire_bytes(10_000)  # the sparse layout won
    assert bytes(got.numpy()) == bytes(want.numpy())
    mixed = [codec.encode(data(10_000, s, sparse=True)) for s in range(3)] + [
        get_codec("threshold", kappa=0.1, bucket=64).encode(data(10_000, 9))
    ]
    ref = torch.zeros(10_000)
    for m in mixed:
        codec.decode_add_(m, ref)
    assert torch.equal(fast.decode_combine(mixed, torch.empty(10_000), "mean"), ref.div_(4))


def test_philox_uniforms_match_the_reference_at_any_offset():
    import numpy as np

    for first, n in ((0, 1), (1, 5), (3, 17), (2**33 + 1, 10), (4096, 4096), (3, 3 * (1 << 18) + 77)):
        for key, step in ((0, 0), (2**64 - 1, 2**40 + 3), (987654321, 12)):
            got = np.empty(n, dtype=np.float32)
            _fill_uniforms(got, first, np.uint64(key), np.uint64(step))
            want = uniforms(CounterStream(key, step, first), n)
            assert torch.equal(torch.from_numpy(got), want)


def test_bytes_do_not_depend_on_the_thread_count():
    import numba

    codec = get_codec("uniform", bits=2, bucket=128)
    fast = kernel_codec(codec, "cpu", "numba")
    x = data(100_000, 4)
    messages = []
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(threads)
        messages.append(bytes(fast.encode_ef(x, rng=CounterStream(3, 4, 5))[0].numpy()))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert len(set(messages)) == 1 and messages[0] == bytes(codec.encode(x, CounterStream(3, 4, 5)).numpy())


@pytest.mark.parametrize("name", ["sign", "uniform", "threshold"])
def test_non_finite_input_is_refused_like_the_reference(name):
    codec = get_codec(name, bucket=16)
    fast = kernel_codec(codec, "cpu", "numba")
    for bad in (float("nan"), float("inf")):
        x = data(100, 1)
        x[40] = bad
        with pytest.raises(ValueError, match=rf"codec '{name}': input has NaN or Inf in bucket 2"):
            codec.encode(x)
        with pytest.raises(ValueError, match=rf"codec '{name}': input has NaN or Inf in bucket 2"):
            fast.encode_ef(x)


def test_damaged_messages_are_rejected():
    codec = get_codec("uniform", levels=2, bucket=8)  # 3-bit codes 0..4: 5, 6, 7 are invalid
    fast = kernel_codec(codec, "cpu", "numba")
    from qtrain.codecs import wire

    n = 16
    scales = torch.ones(2)
    codes = torch.zeros(6, dtype=torch.uint8)
    codes[0] = 7  # first code 7
    bad = wire.assemble(codec.codec_id, 3, 0, n, 8, 2, [scales, codes], "cpu")
    with pytest.raises(WireFormatError, match="outside"):
        fast.decode_combine([bad], torch.zeros(n), "set")
    good = codec.encode(data(n, 1))
    flipped = good.clone()
    flipped[-1] ^= 1
    with pytest.raises(WireFormatError, match="CRC"):
        fast.decode_combine([good, flipped], torch.zeros(n), "mean")


FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(FLOATS, min_size=1, max_size=300),
    case=st.sampled_from(CODECS),
    bucket=st.sampled_from([1, 2, 5, 16, 64]),
    step=st.integers(0, 2**40),
    offset=st.integers(0, 2**40),
    ef_scale=st.sampled_from([0.0, 1e-30, 1.0, 1e30]),
)
def test_property_kernel_equals_reference(values, case, bucket, step, offset, ef_scale):
    """Any finite float32 input (subnormals, huge values, signed zeros) gives the same bytes."""
    name, params = case
    codec = get_codec(name, bucket=bucket, **params)
    fast = kernel_codec(codec, "cpu", "numba")
    p = torch.tensor(values, dtype=torch.float32)
    e0 = torch.flip(p, [0]) * ef_scale
    rng = CounterStream(7, step, offset)
    try:
        want, u, _, want_e = reference_step(codec, p, e0, 1.0, 1.0, rng)
    except ValueError as exc:  # the sum overflowed: both must refuse
        assert "NaN or Inf" in str(exc)
        with pytest.raises(ValueError, match="NaN or Inf"):
            fast.encode_ef(p, e0.clone(), rng=rng)
        return
    e = e0.clone()
    got, _ = fast.encode_ef(p, e, rng=rng)
    assert bytes(got.numpy()) == bytes(want.numpy())
    assert torch.equal(e, want_e) or (torch.isnan(e) == torch.isnan(want_e)).all()
    dec = torch.empty(p.numel())
    fast.decode_combine([got], dec, "set")
    assert torch.equal(dec, codec.decode(want))


RUNS = [
    ("configs/efficient-adam.yaml", []),
    ("configs/ecq-sgd.yaml", []),
    ("configs/qadam.yaml", []),
    ("configs/qadam.yaml", ["downlink.codec=uniform", "downlink.bits=8"]),  # weights mode
    ("configs/qcmd-adagrad.yaml", ["algorithm.l1=0.01"]),
    (
        "configs/sgd.yaml",
        ["uplink.codec=ternary", "downlink.codec=threshold", "downlink.error_feedback=true"],
    ),
    ("configs/sgd.yaml", ["uplink.codec=uniform", "uplink.norm=l2", "uplink.bits=3", "uplink.bucket=100"]),
    (
        "configs/efficient-adam.yaml",
        ["runtime.segments=3", "algorithm.ef_alpha=0.5", "algorithm.ef_beta=0.9"],
    ),
    (
        "configs/efficient-adam.yaml",
        ["algorithm.amsgrad=true", "algorithm.weight_decay=0.01", "algorithm.eps_inside_sqrt=true"],
    ),
    ("configs/qadam.yaml", ["algorithm.bias_correction=false", "uplink.bits=2"]),
    ("configs/adam.yaml", []),  # none both ways
    ("configs/sgd.yaml", ["uplink.codec=fp16", "uplink.error_feedback=true", "downlink.codec=bf16"]),
]


@pytest.mark.parametrize("config, sets", RUNS, ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_training_with_kernels_is_bit_identical_to_the_torch_reference(config, sets, monkeypatch):
    """The simulator (and so MPI, which is bit-identical to it) with runtime.kernels=numba ends
    with exactly the parameters and statistics of runtime.kernels=torch."""
    from qtrain.config import load_config
    from qtrain.engine.simulator import simulate
    from qtrain.kernels.dense_codec import DenseKernelCodec
    from qtrain.kernels.float_codec import FloatKernelCodec

    calls = []
    for cls in (DenseKernelCodec, FloatKernelCodec):
        for name in ("encode_ef", "decode_combine"):
            real = getattr(cls, name)
            monkeypatch.setattr(cls, name, lambda *a, _r=real, **k: calls.append(1) or _r(*a, **k))
    short = ["train.steps=12", "train.eval_every=12", "model.hidden=[64]"]
    runs = {}
    for k in ("torch", "numba"):
        calls.clear()
        cfg = load_config(config, [*short, *sets, f"runtime.kernels={k}"])
        runs[k] = simulate(cfg, 2, None, log=lambda _: None)
        assert bool(calls) == (k == "numba")  # the kernels really ran, and only when asked for
    assert runs["numba"]["params_sha256"] == runs["torch"]["params_sha256"]
    assert runs["numba"]["final_train_loss"] == runs["torch"]["final_train_loss"]


@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True}, {"weight_decay": 0.05}, {"eps_inside_sqrt": True, "bias_correction": False}],
    ids=["plain", "amsgrad", "weight-decay", "eps-inside-no-bias-correction"],
)
@pytest.mark.parametrize(
    "codec", [{"codec": "sign"}, {"codec": "uniform", "bits": 3, "bucket": 100}], ids=ids_of
)
def test_fused_local_adam_step_equals_the_rule_then_the_codec(options, codec):
    """efficient-adam's worker with the Adam step fused into the uplink kernel: the same messages,
    moments and error buffers as the torch rule followed by the torch codec, step after step."""
    from qtrain.algorithms.links import resolve_links
    from qtrain.config import AlgorithmConfig, LinkConfig
    from qtrain.engine import WorkerEngine
    from qtrain.engine.partition import Partition

    class Cfg:
        algorithm = AlgorithmConfig(name="efficient-adam", lr=0.01, **options)
        uplink = LinkConfig(**codec)
        downlink = LinkConfig()

    algo, up, down = resolve_links(Cfg)
    n = 5000
    part = Partition.build(n, (up.codec.bucket, down.codec.bucket), 2)
    engines = {
        k: WorkerEngine(algo, up, down.codec, part, torch.device("cpu"), 3, 1, k) for k in ("torch", "numba")
    }
    assert engines["numba"].up.fuses_adam and not engines["torch"].up.fuses_adam
    params = data(n, 1)
    for step in range(4):
        grad = data(n, 10 + step)
        sent = {}
        for k, eng in engines.items():
            eng.begin_step()
            sent[k] = [bytes(eng.make_uplink(seg, grad, params).numpy()) for seg in part]
        assert sent["numba"] == sent["torch"], step
        for key in engines["torch"].state:
            assert torch.equal(engines["numba"].state[key], engines["torch"].state[key]), key
        assert torch.equal(engines["numba"].error, engines["torch"].error)


def test_kernel_choice_per_device():
    sign = get_codec("sign")
    assert kernel_codec(sign, "cpu", "torch") is None and kernel_codec(sign, "cuda", "torch") is None
    assert kernel_codec(sign, "meta", "auto") is None  # another device: torch expressions on it
    assert kernel_codec(get_codec("topk", ratio=0.1), "cpu", "numba") is None  # no kernel
    assert kernel_codec(get_codec("fp16"), "cuda", "auto") is None  # float codecs: torch on a GPU
    with pytest.raises(ValueError, match="runtime.kernels=triton runs on CUDA devices"):
        kernel_codec(sign, "cpu", "triton")
    with pytest.raises(ValueError, match="runtime.kernels=numba runs on the CPU"):
        kernel_codec(sign, "cuda", "numba")
    with pytest.raises(ValueError, match="runtime.kernels must be one of"):
        kernel_codec(sign, "cpu", "fast")
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    assert type(kernel_codec(sign, "cuda", "auto")).__name__ == "TritonDenseCodec"
    assert kernel_codec(get_codec("uniform", bits=3), "cuda", "auto") is None  # codes across bytes


def same_or_both_nan(a, b):
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and bytes(a[~nan].numpy()) == bytes(b[~nan].numpy())


@pytest.mark.parametrize("case", FLOAT_CODECS, ids=case_id)
def test_float_codec_kernels_match_the_reference(case):
    """none/fp16/bf16: the rounding (subnormals, overflow to inf, NaN patterns), error feedback,
    targets and the N-message decode, bit for bit."""
    name, _ = case
    codec = get_codec(name)
    fast = kernel_codec(codec, "cpu", "numba")
    assert type(fast).__name__ == "FloatKernelCodec"
    for n in (0, 1, 7, 20_011):
        p = data(n, n) * 1e3
        if n > 12:
            p[:12] = torch.tensor(
                [
                    float("nan"),
                    -float("nan"),
                    1e6,
                    65520,
                    65519,
                    1e-8,
                    5.96e-8,
                    2.98e-8,
                    2.99e-8,
                    -0.0,
                    float("inf"),
                    -float("inf"),
                ]
            )
        e0 = data(n, n + 1)
        for alpha, beta in ((1.0, 1.0), (0.5, 0.9)):
            want, u, v, want_e = reference_step(codec, p, e0, alpha, beta, None)
            e, target = e0.clone(), data(n, 3)
            want_target = target - u
            got, _ = fast.encode_ef(p, e, alpha, beta, target=target)
            assert bytes(got.numpy()) == bytes(want.numpy()), (n, alpha)
            # arithmetic on a NaN input may keep either operand's NaN payload: compare NaN-aware
            assert same_or_both_nan(e, want_e) and same_or_both_nan(target, want_target)
        rows = torch.empty((3, codec.wire_bytes(n)), dtype=torch.uint8)  # as the transport holds them
        msgs = [codec.encode(data(n, 7 + w) * 1e4, out=rows[w]) for w in range(3)]
        ref = torch.zeros(n)
        for m in msgs:
            codec.decode_add_(m, ref)
        ref.div_(3)
        same = lambda a, b: bytes(a.numpy()) == bytes(b.numpy())  # noqa: E731  (NaN-safe equality)
        assert same(fast.decode_combine(msgs, torch.empty(n), "mean"), ref)
        assert same(fast.decode_combine([m.clone() for m in msgs], torch.empty(n), "mean"), ref)  # scattered
        base = data(n, 5)
        assert same(fast.decode_combine(msgs[:1], base.clone(), "subtract"), base - codec.decode(msgs[0]))
        assert same(fast.decode_combine(msgs[:1], torch.empty(n), "set"), codec.decode(msgs[0]))
        want_add = codec.decode_add_(msgs[1], base.clone())
        assert same(fast.decode_combine(msgs[1:2], base.clone(), "add"), want_add)


@pytest.mark.parametrize("case", CODECS, ids=case_id)
def test_tiny_bucket_scales_quantize_without_nan_and_match_the_reference(case):
    """A bucket whose largest magnitude is subnormal or near it makes s / r overflow float32 (it
    did: 4-bit uniform turned the bucket's zeros into NaN, so training diverged with EF); both
    paths divide first there and agree byte for byte."""
    name, params = case
    codec = get_codec(name, bucket=64, **params)
    fast = kernel_codec(codec, "cpu", "numba")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64 * 6, generator=g)
    for j, top in enumerate([1e-38, 2e-38, 5e-39, 1e-44, 1.4e-45]):
        block = x[64 * (j + 1) : 64 * (j + 2)]
        block.mul_(top / block.abs().max())
        block[::3] = 0.0
    e = torch.zeros_like(x)
    packed, u, v, new_e = reference_step(codec, x, e.clone(), 1.0, 1.0, CounterStream(9, 1, 0))
    got, _ = fast.encode_ef(x.clone(), e, 1.0, 1.0, CounterStream(9, 1, 0))
    assert torch.equal(got, packed)
    assert torch.isfinite(u).all() and torch.isfinite(e).all() and torch.equal(e, new_e)
    for j in range(6):  # Q(v) stays within one grid step of v, bucket by bucket
        sl = slice(64 * j, 64 * (j + 1))
        assert float((u[sl] - v[sl]).abs().max()) <= float(v[sl].abs().max()) * (1 + 1e-6)


def test_compiling_the_kernels_draws_nothing_from_the_process_generator():
    """``warm_up`` (run inside a job when the disk cache is cold) leaves torch's global generator
    where it was: a script's dropout is the same on the first run after an install as later."""
    from qtrain.kernels import warm_up

    before = torch.get_rng_state()
    warm_up()
    assert torch.equal(torch.get_rng_state(), before)
