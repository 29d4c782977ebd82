"""Compiled fast paths of the codecs (DESIGN.md section 7): one pass over memory per direction.

    path = codec_path(codec, device, "auto")   # the kernel codec, or the torch reference behind its calls
    packed, sums = path.encode_ef(p, e, alpha, beta, rng, out=frame)
    path.decode_combine(messages, acc, "mean")

The CPU kernels are numba (``cpu_dense``), multi-threaded (``set_threads``) and cached on disk
(``NUMBA_CACHE_DIR``, by default ``~/.cache/qtrain/numba``). They produce the reference's bytes
(``tests/test_kernels.py`` checks it byte for byte), so a run with ``runtime.kernels=torch`` and one
with ``runtime.kernels=numba`` give bit-identical results.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

KERNEL_CHOICES = ("auto", "numba", "triton", "torch")

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


_WARM = False  # this process has made sure the numba kernels are compiled


def warm_up() -> None:
    """Compile (or load from the disk cache) every numba kernel the codecs use, then stamp the
    cache as holding this source's kernels (:func:`cache_is_cold`)."""
    from qtrain.codecs import get_codec

    global _WARM
    _WARM = True  # the kernel codecs built below must not warm up again
    # its own generator: a run that compiles here (a cold cache) draws nothing from the process's
    # (a script's dropout would otherwise differ between the first run after an install and the next)
    x, e = torch.randn(4096, generator=torch.Generator().manual_seed(0)), torch.zeros(4096)
    for name, params in (("sign", {}), ("uniform", {"bits": 2}), ("none", {}), ("fp16", {})):
        fast = kernel_codec(get_codec(name, **params), "cpu", "numba")
        rows = torch.zeros(2, 4 * 4096 + 64, dtype=torch.uint8)
        m, _ = fast.encode_ef(x, e, out=rows[0])
        rows[1, : m.numel()] = m
        fast.decode_combine([rows[0, : m.numel()], rows[1, : m.numel()]], torch.empty(4096), "mean")
        fast.decode_combine([m], torch.empty(4096), "subtract")
        fast.decode_combine([m.clone(), m.clone()], torch.empty(4096), "mean")
    stamp = _cache_stamp()
    if stamp is None:
        return
    try:  # written whole, then renamed: a second process reads the old stamp or the new one
        stamp.parent.mkdir(parents=True, exist_ok=True)
        partial = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        partial.write_text(_source_id())
        os.replace(partial, stamp)
    except OSError:  # a read-only cache: the kernels still run, the next process checks again
        pass


def _cache_stamp() -> Path | None:
    """numba keeps this folder's kernels in ``NUMBA_CACHE_DIR/kernels_<sha1 of its abspath>``;
    the stamp beside them names what they were compiled from. None when ``NUMBA_CACHE_DIR`` is
    empty (numba then caches beside the sources)."""
    import hashlib

    if not os.environ.get("NUMBA_CACHE_DIR"):
        return None
    here = os.path.dirname(os.path.abspath(__file__))  # numba's own spelling of the folder
    digest = hashlib.sha1(here.encode()).hexdigest()
    return Path(os.environ["NUMBA_CACHE_DIR"]) / f"{os.path.basename(here)}_{digest}" / "qtrain-warm"


def _source_id() -> str:
    """The kernels' source, numba's version, Python's and the CPU numba compiles for."""
    import hashlib
    import platform

    import numba
    from llvmlite import binding

    source = (Path(__file__).resolve().parent / "cpu_dense.py").read_bytes()
    cpu = numba.config.CPU_NAME or binding.get_host_cpu_name()
    versions = f"numba {numba.__version__} python {platform.python_version()}"
    return f"{hashlib.sha1(source).hexdigest()} {versions} {cpu}"


def cache_is_cold() -> bool:
    """Whether numba's disk cache lacks the kernels of this source, numba, Python and CPU: no
    stamp, or one :func:`warm_up` wrote for something else (numba's own index files are no guide:
    an edit leaves the old functions' entries behind, under their old line numbers). False when
    there is no cache folder to look in."""
    stamp = _cache_stamp()
    if stamp is None:
        return False
    try:
        return stamp.read_text() != _source_id()
    except OSError:
        return True


def _warm_once() -> None:
    """The first numba kernel codec of a process on a cold cache compiles every kernel at once
    and says so (20-45 s on 2 cores), instead of a silent pause inside the first step."""
    global _WARM
    if _WARM:
        return
    _WARM = True
    if not cache_is_cold():
        return
    import sys
    import time

    print(
        f"qtrain: compiling the numba codec kernels (once per installation, 20-45 s on 2 cores; "
        f"cached in {os.environ['NUMBA_CACHE_DIR']})",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    warm_up()
    print(f"qtrain: numba kernels ready in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def codec_path(codec, device, choice: str = "auto"):
    """What the engines encode and decode ``codec`` with: its compiled kernel codec where one
    applies (:func:`kernel_codec`), else the torch reference behind the same interface."""
    fast = kernel_codec(codec, device, choice)
    if fast is not None:
        return fast
    from qtrain.kernels.reference_codec import ReferenceCodec

    return ReferenceCodec(codec)


def kernel_codec(codec, device, choice: str = "auto"):
    """The compiled fast path of ``codec`` on ``device``, or None where the torch reference runs.

    CPU: numba (``choice`` auto or numba); CUDA: Triton (auto or triton). None for "torch", for
    topk and sparse (a selection and a scatter), on CUDA for the float codecs and the layouts the
    Triton kernels do not cover, and under "auto" when the compiler is not installed. Asking for
    a compiler that is missing, or for the other device's, raises ValueError."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"runtime.kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    if choice == "torch":
        return None
    from qtrain.codecs.entropy import EntropyCoded

    if isinstance(codec, EntropyCoded):
        from qtrain.kernels.entropy_stage import EntropyKernelCodec

        inner = kernel_codec(codec.inner, device, choice)
        return None if inner is None else EntropyKernelCodec(codec, inner)
    device = torch.device(device)
    if device.type == "cuda":
        return _triton_codec(codec, choice)
    if choice == "triton":
        raise ValueError("runtime.kernels=triton runs on CUDA devices; this rank computes on the CPU")
    if device.type != "cpu":  # another accelerator: the torch expressions on it
        return None
    if not numba_available():
        if choice == "numba":
            raise ValueError("runtime.kernels=numba, but numba is not installed (pip install numba)")
        return None
    from qtrain.kernels.codec_base import kernel_kind
    from qtrain.kernels.dense_codec import DenseKernelCodec
    from qtrain.kernels.float_codec import FORMATS, FloatKernelCodec

    if codec.name in FORMATS:
        return FloatKernelCodec(codec)
    if kernel_kind(codec) is None:
        return None
    _warm_once()
    return DenseKernelCodec(codec)


def _triton_codec(codec, choice: str):
    if choice == "numba":
        raise ValueError("runtime.kernels=numba runs on the CPU; this rank computes on a CUDA device")
    try:
        from qtrain.kernels.triton_codec import TritonDenseCodec, triton_supports
    except ImportError as exc:
        if choice == "triton":
            raise ValueError(f"runtime.kernels=triton, but triton cannot be imported ({exc})") from exc
        return None
    return TritonDenseCodec(codec) if triton_supports(codec) else None
