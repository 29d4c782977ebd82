"""Codec configurations the tests sweep over."""

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
]

SIZES = [0, 1, 2, BUCKET - 1, BUCKET, BUCKET + 1, 3 * BUCKET + 17, 1001]


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def build(case):
    name, params = case
    return get_codec(name, **params)
