"""Codec configurations and inputs the tests sweep over."""

import torch

from qtrain.codecs import get_codec

BUCKET = 64  # small buckets make the bucket-edge sizes cheap to test

ALL_CASES = [
    ("none", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("sign", {"bucket": BUCKET}),
    *[
        ("uniform", {"bits": b, "norm": n, "rounding": r, "bucket": BUCKET})
        for b in range(2, 9)
        for n in ("l2", "linf")
        for r in ("stochastic", "nearest")
    ],
    ("uniform", {"levels": 2, "bucket": BUCKET}),
    ("ternary", {"bucket": BUCKET}),
    ("threshold", {"bucket": BUCKET}),
    ("threshold", {"bucket": BUCKET, "layout": "sparse", "reference": "linf", "kappa": 0.5}),
    ("threshold", {"bucket": BUCKET, "layout": "dense", "kappa": 2.0}),
    ("topk", {"k": 5, "bucket": BUCKET}),
    ("topk", {"k": 3, "bucket": BUCKET, "values": "fp16"}),
    ("topk", {"k": 2, "bucket": 70_000}),  # global int32 indices
    ("sparse", {}),
    # the lossless stage after quantization (codecs.entropy) on top of each kind of layout
    ("none", {"entropy": "zstd"}),
    ("sign", {"bucket": BUCKET, "entropy": "zstd"}),
    ("uniform", {"bits": 2, "norm": "l2", "bucket": BUCKET, "entropy": "zstd"}),
    ("uniform", {"bits": 4, "rounding": "nearest", "bucket": BUCKET, "entropy": "zstd", "entropy_level": 1}),
    ("threshold", {"bucket": BUCKET, "entropy": "zstd"}),
    ("topk", {"k": 5, "bucket": BUCKET, "entropy": "zstd", "entropy_level": 19}),
    ("sparse", {"entropy": "zstd"}),
]

SIZES = [0, 1, 2, BUCKET - 1, BUCKET, BUCKET + 1, 3 * BUCKET + 17, 1001]


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def build(case):
    name, params = case
    return get_codec(name, **params)


def wide_range_floats(n: int, seed: int, zeros: float = 0.0) -> torch.Tensor:
    """n float32 values over many orders of magnitude (normal times e^(2 normal)); with ``zeros``,
    that share set to 0 and then a tenth of all set to -0.0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(2 * torch.randn(n, generator=g))
    if zeros:
        x[torch.rand(n, generator=g) < zeros] = 0
        x[torch.rand(n, generator=g) < 0.1] = -0.0
    return x
