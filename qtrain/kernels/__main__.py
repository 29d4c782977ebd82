"""``python -m qtrain.kernels``: compile the numba kernels into the disk cache and say how long it
took (``make install`` runs it, so that the first training run does not pay the compile time)."""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    from qtrain.kernels import numba_available, warm_up

    if not numba_available():
        print("numba is not installed: the codecs run as torch expressions")
        return 0
    start = time.perf_counter()
    warm_up()
    took = time.perf_counter() - start
    print(f"numba kernels ready in {took:.1f} s (cache: {os.environ['NUMBA_CACHE_DIR']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
