"""Whether a worker sends each segment from backward's hooks (overlap) or after backward."""

from __future__ import annotations


def uses_overlap(setting: str, device, thread_multiple: bool) -> tuple[bool, str]:
    """``runtime.overlap`` (on, off or auto) for this worker: whether to send segments from the
    backward hooks, and why. Autograd runs a CPU backward's hooks on the thread that called
    backward, the one that talks to the backend, so any thread level will do; a CUDA backward runs
    them on a device thread, which needs a backend that other threads may call
    (``thread_multiple``: ``Backend.threads_may_communicate``, MPI_THREAD_MULTIPLE under MPI).
    ``auto`` is on for CPU workers only; ``on`` falls back to sending after backward, with the
    reason, where the thread level is too low."""
    if setting == "off":
        return False, "runtime.overlap=off"
    if str(device) == "cpu":
        return True, "hooks run on the thread that talks to the backend (CPU backward)"
    if setting == "auto":
        return False, "auto: a CUDA backward runs hooks on a device thread"
    if not thread_multiple:
        return False, "runtime.overlap=on needs MPI_THREAD_MULTIPLE for a CUDA backward, not granted"
    return True, "runtime.overlap=on with a backend other threads may call (MPI_THREAD_MULTIPLE, gloo)"
