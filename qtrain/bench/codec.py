"""Codec speed against the same run's copy bandwidth: the public API and the engine's paths, each
as a ratio to its memory-traffic floor.

For n float32 elements, W bytes of one message and N workers, the bytes each path must move:

=============  =====================================================================  ==========
path           what runs                                                              floor
=============  =====================================================================  ==========
encode         ``qtrain.get_codec(...).encode(x, out=frame)``: the public API, no EF   4n + W
encode+EF      the worker's uplink: v = p + e, the message of Q(v), e <- p + e - Q(v)  12n + W
               (``WorkerEngine.make_uplink``)
decode         ``qtrain.get_codec(...).decode(msg, out)``: the public API              W + 4n
aggregate      the server's mean of N uplinks (``ServerEngine.aggregate``)             N W + 4n
worker step    efficient-adam's whole worker step: local Adam moments, EF, sign        28n + W
=============  =====================================================================  ==========

Every path runs what ``kernels`` chooses (``runtime.kernels``; ``torch``: the reference codecs):
``path`` says what the engine runs, ``api_path`` what ``qtrain.get_codec`` runs (the torch
reference for the float codecs under ``auto``, which torch encodes and decodes as fast).
The floor time is those bytes divided by the copy bandwidth, 8n / (time of ``y.copy_(x)``) measured
in the same run with the same threads; ``*_floor_ratio`` = measured time / floor time.
"""

from __future__ import annotations

import time

import torch

from qtrain.algorithms.links import Link
from qtrain.algorithms.registry import get_algorithm
from qtrain.bench.timing import median_seconds
from qtrain.codecs import CounterStream
from qtrain.codecs import get_codec as reference_codec
from qtrain.config import AlgorithmConfig
from qtrain.engine.partition import Partition
from qtrain.engine.server import ServerEngine
from qtrain.engine.worker import WorkerEngine
from qtrain.kernels import kernel_codec, set_threads
from qtrain.kernels.fast_codec import get_codec

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
    # the lossless stage (codecs.entropy): on random input linf codes are near their 2 bits of
    # entropy, l2 codes (most of them zero) far below
    ("uniform-2b-l2", "uniform", {"bits": 2, "norm": "l2"}),
    ("uniform-2b+zstd", "uniform", {"bits": 2, "entropy": "zstd"}),
    ("uniform-2b-l2+zstd", "uniform", {"bits": 2, "norm": "l2", "entropy": "zstd"}),
]
AGGREGATE_WORKERS = 4


def _engines(algorithm: str, codec, numel: int, device, kernels: str):
    """A worker engine with EF on the uplink and a server engine, one segment, on ``codec``."""
    algo = get_algorithm(AlgorithmConfig(name=algorithm))
    uplink = Link("uplink", codec, True)
    downlink = Link("downlink", codec, False)
    part = Partition.build(numel, (codec.bucket, codec.bucket), 1)
    master = torch.zeros(numel, device=device)
    worker = WorkerEngine(algo, uplink, codec, part, device, 0, 0, kernels)
    server = ServerEngine(algo, codec, downlink, part, master, 0, kernels)
    return part.segments[0], worker, server


def _input_and_copy(numel: int, device: str, seed: int, threads: int, repeats: int):
    """Set the threads; the random float32 input, its device and the copy time and bandwidth
    (8n bytes moved) of the same run: every floor is measured against it."""
    if threads:
        torch.set_num_threads(threads)
        set_threads(threads)
    dev = torch.device(device)
    x = torch.randn(numel, generator=torch.Generator(device=dev).manual_seed(seed), device=dev)
    y = torch.empty_like(x)
    copy_s = median_seconds(lambda: y.copy_(x), dev, repeats)
    return x, dev, copy_s, 8 * numel / copy_s


def bench_codecs(
    numel: int = 2**24,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 0,
    kernels: str = "auto",
    cases: list | None = None,
    progress=None,
) -> list[dict]:
    """One row per codec of ``cases`` (``DEFAULT_CASES``); ``progress(label, seconds)`` is called
    after each."""
    x, dev, copy_s, bps = _input_and_copy(numel, device, seed, threads, repeats)
    n4 = 4 * numel
    rows = []
    for label, name, params in cases or DEFAULT_CASES:
        start = time.perf_counter()
        codec = get_codec(name, kernels=kernels, **params)  # the public API's
        engine_codec = reference_codec(name, **params)  # the engines pick their own path for it
        packed = codec.encode(x, CounterStream(seed))
        wire = packed.numel()
        timings = _time_paths(codec, engine_codec, x, packed, dev, repeats, seed, kernels)
        floors = {
            "encode": n4 + wire,
            "encode_ef": 3 * n4 + wire,
            "decode": wire + n4,
            "aggregate": AGGREGATE_WORKERS * wire + n4,
        }
        row = {
            "codec": label,
            "name": name,
            "params": codec.params(),
            "bits": codec.bits,
            "numel": numel,
            "wire_bytes": wire,
            "compression_vs_fp32": n4 / wire,
            "path": _engine_path(engine_codec, dev, kernels),
            "api_path": "torch" if kernels == "torch" else codec.path(dev),
            "aggregate_workers": AGGREGATE_WORKERS,
            "copy_s": copy_s,
            "copy_gbps": bps / 1e9,
            "device": str(dev),
            "threads": torch.get_num_threads(),
        }
        for key, seconds in timings.items():
            row[f"{key}_s"] = seconds
            row[f"{key}_floor_ratio"] = seconds / (floors[key] / bps)
        row["encode_gbps"] = n4 / timings["encode"] / 1e9
        row["decode_gbps"] = n4 / timings["decode"] / 1e9
        rows.append(row)
        if progress:
            progress(label, time.perf_counter() - start)
    return rows


def estimate_seconds(numel: int, repeats: int, device: str, threads: int, kernels: str) -> float:
    """About how long ``bench_codecs`` and ``bench_worker_step`` take at ``numel`` elements: both
    timed at 2^18 elements with one run per path, scaled linearly (the small sizes' fixed costs
    make it an overestimate rather than an under-)."""
    small = min(numel, 2**18)
    bench_codecs(4096, 1, device, 0, threads, kernels)  # compiles the kernels (or loads them) first
    start = time.perf_counter()
    bench_codecs(small, 1, device, 0, threads, kernels)
    bench_worker_step(small, 1, device, 0, threads, kernels)
    return (time.perf_counter() - start) * numel / small * (repeats + 1) / 2


def _engine_path(codec, dev: torch.device, kernels: str) -> str:
    """What the engine encodes and decodes ``codec`` with (``kernels.codec_path``)."""
    if kernel_codec(codec, dev, kernels) is None:
        return "torch"
    return "triton" if dev.type == "cuda" else "numba"


def _time_paths(codec, engine_codec, x, packed, dev, repeats, seed, kernels) -> dict[str, float]:
    numel = x.numel()
    rng = CounterStream(seed)
    seg, worker, server = _engines("sgd", engine_codec, numel, dev, kernels)
    worker.begin_step()
    frame = torch.empty(codec.wire_bytes(numel), dtype=torch.uint8, device=dev)
    # the uplinks in rows of one receive buffer, as the MPI transport holds them
    rows = torch.empty((AGGREGATE_WORKERS, codec.wire_bytes(numel)), dtype=torch.uint8, device=dev)
    msgs = [
        codec.encode(x * (1 + w), CounterStream(seed, 1, w), out=rows[w]) for w in range(AGGREGATE_WORKERS)
    ]
    out = torch.empty_like(x)
    return {
        "encode": median_seconds(lambda: codec.encode(x, rng, out=frame), dev, repeats),
        "encode_ef": median_seconds(lambda: worker.make_uplink(seg, x, x, frame), dev, repeats),
        "decode": median_seconds(lambda: codec.decode(packed, out=out), dev, repeats),
        "aggregate": median_seconds(lambda: server.aggregate(seg, msgs), dev, repeats),
    }


def bench_worker_step(
    numel: int = 2**24,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 0,
    kernels: str = "auto",
) -> dict:
    """efficient-adam's worker step (local Adam, EF, 1-bit sign) against its floor: read g, m, v, e;
    write m, v, e and the message."""
    g, dev, _, bps = _input_and_copy(numel, device, seed, threads, repeats)
    codec = reference_codec("sign")
    seg, worker, _ = _engines("efficient-adam", codec, numel, dev, kernels)
    frame = torch.empty(codec.wire_bytes(numel), dtype=torch.uint8, device=dev)

    def step():
        worker.begin_step()
        worker.make_uplink(seg, g, g, frame)

    seconds = median_seconds(step, dev, repeats)
    floor = 7 * 4 * numel + codec.wire_bytes(numel)
    return {
        "path": "efficient-adam worker step (Adam + EF + sign)",
        "numel": numel,
        "seconds": seconds,
        "floor_ratio": seconds / (floor / bps),
        "copy_gbps": bps / 1e9,
        "threads": torch.get_num_threads(),
        "kernels": kernels,
    }
