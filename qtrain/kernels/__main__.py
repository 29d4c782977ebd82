"""``python -m qtrain.kernels``: compile the numba kernels into the disk cache and say how long it
took (``make install`` runs it, so that the first training run does not pay the compile time)."""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    from qtrain.kernels import numba_available

    if not numba_available():
        print("numba is not installed: the codecs run as torch expressions")
        return 0
    import torch

    from qtrain.codecs import get_codec
    from qtrain.kernels import kernel_codec

    start = time.perf_counter()
    x, e = torch.randn(4096), torch.zeros(4096)
    for name, params in (("sign", {}), ("uniform", {"bits": 2})):
        fast = kernel_codec(get_codec(name, **params), "cpu", "numba")
        rows = torch.zeros(2, 2048, dtype=torch.uint8)
        m, _ = fast.encode_ef(x, e, out=rows[0])
        rows[1, : m.numel()] = m
        fast.decode_combine([rows[0, : m.numel()], rows[1, : m.numel()]], torch.empty(4096), "mean")
        fast.decode_combine([m], torch.empty(4096), "subtract")
        fast.decode_combine([m.clone(), m.clone()], torch.empty(4096), "mean")
    took = time.perf_counter() - start
    print(f"numba kernels ready in {took:.1f} s (cache: {os.environ['NUMBA_CACHE_DIR']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
