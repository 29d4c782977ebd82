"""Encode/decode speed of every codec against the same run's stream-copy bandwidth.

The memory-traffic floor of an operation is the bytes it must read plus the bytes it must write,
divided by the measured copy bandwidth (copy moves 2 * 4 * n bytes: read x, write y):
  encode: reads 4n bytes of float32, writes wire_bytes(n)
  decode: reads wire_bytes(n), writes 4n bytes of float32
``*_floor_ratio`` = measured time / floor time (1.0 would be at the bandwidth floor).
"""

from __future__ import annotations

import torch

from qtrain.bench.timing import median_seconds
from qtrain.codecs import get_codec

# (label, codec name, params): every codec, and the bit widths users pick most for uniform
DEFAULT_CASES = [
    ("none", "none", {}),
    ("fp16", "fp16", {}),
    ("bf16", "bf16", {}),
    ("sign", "sign", {}),
    ("uniform-2b", "uniform", {"bits": 2}),
    ("uniform-4b", "uniform", {"bits": 4}),
    ("uniform-8b", "uniform", {"bits": 8}),
    ("ternary", "ternary", {}),
    ("threshold", "threshold", {}),
    ("topk-1%", "topk", {"ratio": 0.01}),
    ("sparse", "sparse", {}),
]


def bench_codecs(numel: int = 2**24, repeats: int = 5, device: str = "cpu", seed: int = 0) -> list[dict]:
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(numel, generator=gen, device=dev)
    y = torch.empty_like(x)
    copy_s = median_seconds(lambda: y.copy_(x), dev, repeats)
    copy_bps = 2 * 4 * numel / copy_s
    rows = []
    for label, name, params in DEFAULT_CASES:
        codec = get_codec(name, **params)
        packed = codec.encode(x, generator=gen)
        out = torch.empty_like(x)
        encode_s = median_seconds(lambda c=codec: c.encode(x, generator=gen), dev, repeats)
        decode_s = median_seconds(lambda c=codec, p=packed, o=out: c.decode(p, out=o), dev, repeats)
        wire = packed.numel()
        rows.append(
            {
                "codec": label,
                "name": name,
                "params": codec.params(),
                "bits": codec.bits,
                "numel": numel,
                "wire_bytes": wire,
                "compression_vs_fp32": 4 * numel / wire,
                "encode_s": encode_s,
                "decode_s": decode_s,
                "encode_gbps": 4 * numel / encode_s / 1e9,
                "decode_gbps": 4 * numel / decode_s / 1e9,
                "copy_s": copy_s,
                "copy_gbps": copy_bps / 1e9,
                "encode_floor_ratio": encode_s / ((4 * numel + wire) / copy_bps),
                "decode_floor_ratio": decode_s / ((4 * numel + wire) / copy_bps),
                "device": str(dev),
                "threads": torch.get_num_threads(),
            }
        )
    return rows
