"""Seeds for every random stream of a run, derived from the run seed by name.

``derive_seed(seed, "data", worker, epoch)`` hashes its parts, so streams never collide and a run
is reproducible from its seed alone. ``stream_seed`` is the Philox key of the codecs'
stochastic-rounding stream of one link of one rank (``codecs.philox``): the step and the element
index are the counter, so segments need no streams of their own.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from a tuple such as (run seed, "data", worker, epoch); stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream_seed(seed: int, direction: str, worker: int | None) -> int:
    """The Philox key of one link's stochastic rounding: ``direction`` is "uplink" (``worker``
    0-based) or "downlink" (``worker`` None: the server's one stream)."""
    return derive_seed(seed, direction) if worker is None else derive_seed(seed, direction, worker)
