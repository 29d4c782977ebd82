"""Seeds for every random stream of a run, derived from the run seed by name.

``derive_seed(seed, "data", worker, epoch)`` hashes its parts, so streams never collide and a run
is reproducible from its seed alone. ``stream_seed`` names the codecs' stochastic-rounding streams:
one per (direction, worker, segment). Segment 0 keeps the key of the one-segment layout, so a run
with the default single segment draws exactly what earlier versions drew.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from a tuple such as (run seed, "data", worker, epoch); stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_seed(seed: int, direction: str, worker: int | None, segment: int) -> int:
    """The stochastic-rounding stream of one segment of one link: ``direction`` is "uplink"
    (``worker`` 0-based) or "downlink" (``worker`` None: the server's one stream)."""
    key = (seed, direction) if worker is None else (seed, direction, worker)
    return derive_seed(*key) if segment == 0 else derive_seed(*key, "segment", segment)
