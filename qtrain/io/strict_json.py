"""JSON text that every parser accepts: the files qtrain writes (``summary.json``, the benchmarks'
and reproductions' ``results.json``) and the ``--json`` output of its commands.

Python's ``json`` writes a non-finite float as the bare words ``NaN``, ``Infinity`` and
``-Infinity``, which are not JSON: strict parsers (``jq``, JavaScript's ``JSON.parse``, Go, Rust's
serde_json, ``json.loads(..., parse_constant=...)``) refuse the whole file. A run whose loss was
never reported, or that diverged, has such numbers. Here they are written as ``null`` ("no
number"), and anything else that is not JSON still raises. qtrain's readers accept both, so the
files written before this module stay readable: ``json.loads`` reads the bare words as NaN and
infinities, and every reader treats ``null`` and NaN alike where a loss may be missing."""

from __future__ import annotations

import json
import math


def finite_or_none(value):
    """A copy of ``value`` (dicts, lists, tuples, scalars) with every non-finite float replaced by
    None; other values are returned as they are."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps(value, **kwargs)`` with non-finite floats as ``null``; ``allow_nan=False``, so
    a NaN that slips past (from a ``default=`` hook) raises instead of writing non-JSON."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)
