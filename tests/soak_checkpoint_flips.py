"""`make soak`: flip one bit of every byte of a real checkpoint (bit i % 8 of byte i) and read each
damaged file the way a resume does, in child processes, so that a crash or a hang would show as
such. Every flip must be rejected with a CheckpointError, or load exactly the original contents.

    python tests/soak_checkpoint_flips.py [--jobs N] [--timeout S]

Prints one line per outcome and exits 1 unless every flip was rejected or loaded identically.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def _check_range(args) -> collections.Counter:
    path, start, stop = args
    from qtrain.io.checkpoint import CheckpointError, read_checkpoint

    data = Path(path).read_bytes()
    original, _ = read_checkpoint(Path(path))
    outcomes = collections.Counter()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        target = Path(d) / "step-0000004.h5"
        for i in range(start, stop):
            damaged = bytearray(data)
            damaged[i] ^= 1 << (i % 8)
            target.write_bytes(damaged)
            try:
                tree, _ = read_checkpoint(target)
            except CheckpointError:
                outcomes["rejected with CheckpointError"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - what the soak is looking for
                outcomes[f"byte {i}: uncaught {type(exc).__name__}: {exc}"] += 1
                continue
            same = _equal(tree, original)
            outcomes["loaded identical contents" if same else f"byte {i}: loaded DIFFERENT contents"] += 1
    return outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole sweep")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "qtrain", "simulate", "configs/ecq-sgd.yaml", "--workers", "2", "--quiet"]
            + ["--set", "train.steps=4", "--set", "checkpoint.every=4", "--out", out],
            check=True,
            capture_output=True,
        )
        (path,) = (Path(out) / "checkpoints").glob("step-*.h5")
        size = path.stat().st_size
        chunk = 4096
        ranges = [(str(path), s, min(s + chunk, size)) for s in range(0, size, chunk)]
        t0 = time.monotonic()
        total = collections.Counter()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs, maxtasksperchild=8) as pool:
            result = pool.map_async(_check_range, ranges)
            try:
                for counts in result.get(timeout=args.timeout):
                    total.update(counts)
            except multiprocessing.TimeoutError:
                print(f"soak: HANG: the sweep did not finish in {args.timeout} s", file=sys.stderr)
                return 1
    print(f"soak: {size} bytes of {path.name}, one bit flipped per byte, {time.monotonic() - t0:.0f} s")
    for outcome, n in sorted(total.items()):
        print(f"  {n:8d}  {outcome}")
    good = {"rejected with CheckpointError", "loaded identical contents"}
    return 0 if set(total) <= good and sum(total.values()) == size else 1


if __name__ == "__main__":
    sys.exit(main())
