import math

import pytest
import torch
from codec_cases import ALL_CASES, BUCKET, SIZES, build, case_id

from qtrain.codecs import CODECS, CounterStream, WireFormatError, get_codec


def inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    yield torch.randn(n, generator=g)
    yield torch.randn(n, generator=g) ** 3  # heavy tails
    sparse = torch.randn(n, generator=g)
    sparse[torch.rand(n, generator=g) < 0.8] = 0
    yield sparse
    yield torch.zeros(n)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_shape_and_size(case, n):
    codec = build(case)
    for x in inputs(n):
        packed = codec.encode(x, rng=CounterStream(1))
        assert packed.dtype == torch.uint8 and packed.dim() == 1
        if codec.fixed_size:
            assert packed.numel() == codec.wire_bytes(n)
        else:
            assert packed.numel() <= codec.wire_bytes(n)
        y = codec.decode(packed)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert torch.isfinite(y).all()
        if not x.any():
            assert not y.any(), "zeros must decode to zeros"
        out = torch.full((n,), 7.0)
        assert codec.decode(packed, out=out) is out and torch.equal(out, y)


def test_every_registered_codec_is_tested():
    assert {name for name, _ in ALL_CASES} == set(CODECS)


@pytest.mark.parametrize("n", SIZES)
def test_exact_codecs(n):
    for x in inputs(n):
        assert torch.equal(get_codec("none").decode(get_codec("none").encode(x)), x)
        assert torch.equal(get_codec("sparse").decode(get_codec("sparse").encode(x)), x)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_uniform_is_exact_on_grid_points(bits, rounding):
    codec = get_codec("uniform", bits=bits, norm="linf", rounding=rounding, bucket=BUCKET)
    s = codec.levels
    g = torch.Generator().manual_seed(bits)
    n = 5 * BUCKET + 3
    levels = torch.randint(-s, s + 1, (n,), generator=g)
    levels[::BUCKET] = s  # every bucket reaches the top level, so its linf scale is exactly `scale`
    scale = torch.tensor(2.0).pow(torch.randint(-4, 5, ((n + BUCKET - 1) // BUCKET,), generator=g))
    x = levels.float() * scale.repeat_interleave(BUCKET)[:n] / s
    y = codec.decode(codec.encode(x, rng=CounterStream(bits)))
    assert torch.allclose(y, x, rtol=1e-6, atol=0)
    assert torch.equal(torch.sign(y), torch.sign(x))


def test_sign_and_threshold_exact_on_their_grids():
    x = torch.tensor([0.5, -0.5, 0.5, 0.5, -0.5] * 30)
    assert torch.equal(get_codec("sign", bucket=BUCKET).decode(get_codec("sign", bucket=BUCKET).encode(x)), x)
    t = torch.tensor([0.25, 0.0, -0.25, 0.0] * 40)
    for layout in ("dense", "sparse", "auto"):
        c = get_codec("threshold", bucket=BUCKET, layout=layout)
        assert torch.equal(c.decode(c.encode(t)), t)


def test_sign_maps_zero_to_plus_scale():
    c = get_codec("sign", bucket=4)
    y = c.decode(c.encode(torch.tensor([0.0, -0.0, 2.0, -2.0])))
    assert y.tolist() == [1.0, 1.0, 1.0, -1.0]


def test_threshold_chooses_sparse_layout_when_smaller():
    c = get_codec("threshold", bucket=BUCKET, reference="linf", kappa=0.9)
    x = torch.zeros(10 * BUCKET)
    x[::BUCKET] = 1.0
    packed = c.encode(x)
    assert packed[7] & 1, "sparse flag"
    assert packed.numel() < c.wire_bytes(x.numel())
    assert torch.equal(c.decode(packed), x)
    dense = get_codec("threshold", bucket=BUCKET, kappa=0.0)
    assert not (dense.encode(torch.randn(1000))[7] & 1)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if build(c).delta() is not None], ids=case_id)
@pytest.mark.parametrize("n", [1, BUCKET - 1, BUCKET + 1, 1001, 4096])
def test_deterministic_codecs_contract_by_their_documented_delta(case, n):
    codec = build(case)
    delta = codec.delta()
    assert 0 <= delta <= 1
    for seed in range(3):
        for x in inputs(n, seed):
            if codec.name in ("fp16", "bf16"):
                x = x.clamp(-1e4, 1e4)
            err = (codec.decode(codec.encode(x)) - x).double().norm()
            assert err <= delta * x.double().norm() * (1 + 1e-5) + 1e-30, (err, delta)


@pytest.mark.parametrize(
    "codec",
    [
        get_codec("uniform", bits=2, norm="l2", bucket=BUCKET),
        get_codec("uniform", bits=2, norm="linf", bucket=BUCKET),
        get_codec("uniform", bits=4, norm="l2", bucket=BUCKET),
        get_codec("uniform", levels=2, norm="linf", bucket=BUCKET),
        get_codec("ternary", bucket=BUCKET),
    ],
    ids=repr,
)
def test_stochastic_codecs_are_unbiased(codec):
    """Per element, Q(x)_i = sign(x_i) * l_i * r / s with l_i - floor(t_i) ~ Bernoulli(p_i),
    p_i = frac(t_i), so Var[Q_i] = (r/s)^2 p_i (1 - p_i). Over T draws the standardized errors
    z_i = (mean_i - x_i) / sqrt(Var_i / T) are ~N(0, 1), and sum z_i^2 over the m elements with
    Var_i > 0 is chi-square with m degrees of freedom: accept mean m +- 6 sqrt(2m)."""
    g = torch.Generator().manual_seed(123)
    n, trials = 2 * BUCKET, 4000
    x = torch.randn(n, generator=g).double()
    x32 = x.float()
    tiled = x32.repeat(trials)  # bucket-aligned copies: every copy sees the same bucket scales
    q = codec.decode(codec.encode(tiled, rng=CounterStream(123))).view(trials, n).double()
    xb = x32.view(-1, BUCKET).double()
    r = xb.norm(dim=1) if codec.norm == "l2" else xb.abs().amax(dim=1)
    r = r.repeat_interleave(BUCKET)
    t = x32.double().abs() * codec.levels / r
    p = t - t.floor()
    var = (r / codec.levels) ** 2 * p * (1 - p)
    live = var > 1e-12
    z2 = ((q.mean(0) - x32.double())[live] ** 2) / (var[live] / trials)
    m = int(live.sum())
    assert m > n // 2
    assert abs(float(z2.sum()) - m) < 6 * math.sqrt(2 * m), (float(z2.sum()), m)
    # and it is not trivially unbiased: single draws really are noisy
    assert float((q[0] - x32.double()).abs().max()) > 0


def test_stochastic_codec_is_reproducible_from_its_counter_stream():
    c = get_codec("uniform", bits=3)
    x = torch.randn(5000)
    a = c.encode(x, rng=CounterStream(7))
    b = c.encode(x, rng=CounterStream(7))
    d = c.encode(x, rng=CounterStream(8))
    assert torch.equal(a, b) and not torch.equal(a, d)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: get_codec("nope"), "unknown codec 'nope'"),
        (lambda: get_codec("sign", bits=3), "takes"),
        (lambda: get_codec("uniform", bits=1), "bits"),
        (lambda: get_codec("uniform", bits=9), "bits"),
        (lambda: get_codec("uniform", levels=3, bits=2), "need 3 bits"),
        (lambda: get_codec("uniform", norm="l3"), "norm"),
        (lambda: get_codec("sign", bucket=0), "bucket"),
        (lambda: get_codec("topk", k=600, bucket=512), "k must"),
        (lambda: get_codec("threshold", kappa=-1), "kappa"),
        (lambda: get_codec("sign").encode(torch.randn(3, 3)), "1-D"),
        (lambda: get_codec("sign").encode([1.0, 2.0]), "torch.Tensor"),
        (lambda: get_codec("sign").encode(torch.tensor([1.0, float("nan")])), "NaN or Inf in bucket 0"),
        (lambda: get_codec("uniform").encode(torch.tensor([float("inf")])), "NaN or Inf"),
        (lambda: get_codec("topk", k=1, bucket=2).encode(torch.tensor([1.0, float("nan")])), "NaN"),
    ],
)
def test_bad_parameters_and_inputs_get_clear_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_decoding_with_the_wrong_codec_or_settings_is_a_wire_format_error():
    x = torch.randn(1000)
    with pytest.raises(WireFormatError, match="encoded by codec 'sign'"):
        get_codec("uniform").decode(get_codec("sign").encode(x))
    with pytest.raises(WireFormatError, match="bucket size 512, this codec uses 256"):
        get_codec("sign", bucket=256).decode(get_codec("sign").encode(x))
    with pytest.raises(WireFormatError, match="levels"):
        get_codec("uniform", levels=2).decode(get_codec("uniform", bits=3).encode(x))
    with pytest.raises(ValueError, match="decode\\(out=...\\)"):
        get_codec("none").decode(get_codec("none").encode(x), out=torch.empty(999))


def test_input_dtypes_are_converted():
    x = torch.randn(100, dtype=torch.float64)
    c = get_codec("none")
    assert torch.equal(c.decode(c.encode(x)), x.float())
    assert torch.equal(c.decode(c.encode(x.half())), x.half().float())
