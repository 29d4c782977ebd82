"""Compiled fast paths of the codecs (DESIGN.md section 7): one pass over memory per direction.

    fast = kernel_codec(codec, device, "auto")   # a DenseKernelCodec, or None: use the reference
    packed, sums = fast.encode_ef(p, e, alpha, beta, rng, out=frame)
    fast.decode_combine(messages, acc, "mean")

The CPU kernels are numba (``cpu_dense``), multi-threaded (``set_threads``) and cached on disk
(``NUMBA_CACHE_DIR``, by default ``~/.cache/qtrain/numba``). They produce the reference's bytes
(``tests/test_kernels.py`` checks it byte for byte), so a run with ``runtime.kernels=torch`` and one
with ``runtime.kernels=numba`` give bit-identical results.
"""

from __future__ import annotations

import os
from pathlib import Path

KERNEL_CHOICES = ("auto", "numba", "torch")

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "qtrain" / "numba"))
# numba's own thread pool: its OpenMP layer would share (and reset) torch's OpenMP thread count
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def set_threads(threads: int) -> None:
    """Threads of the numba kernels (0: leave numba's default, one per core)."""
    if threads and numba_available():
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def kernel_codec(codec, device, choice: str = "auto"):
    """The compiled fast path of ``codec`` on ``device``, or None where the torch reference runs:
    ``choice`` "torch", a device other than the CPU, a codec without a dense kernel (none, fp16,
    bf16: already one torch pass; topk, sparse: selection and scatter), or numba missing under
    "auto". "numba" without numba installed raises."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"runtime.kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice == "torch" or str(device) != "cpu":
        return None
    if not numba_available():
        if choice == "numba":
            raise ValueError("runtime.kernels=numba, but numba is not installed (pip install numba)")
        return None
    from qtrain.kernels.dense_codec import DenseKernelCodec, kernel_kind

    return DenseKernelCodec(codec) if kernel_kind(codec) is not None else None
