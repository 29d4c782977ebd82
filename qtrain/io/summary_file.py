"""Reading a run's ``summary.json`` without trusting it: a regular file of bounded size, valid
UTF-8 JSON, an object whose items ``qtrain compare`` and the benchmarks use have the kind a run
writes (``engine/accounting.py``). Every failure is one ``SummaryError`` line that names the file and
the item."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

MAX_SUMMARY_BYTES = 64 << 20  # a run's summary is kilobytes; its evaluations list grows by ~100 B each


class SummaryError(ValueError):
    """summary.json is missing, unreadable or not what a run writes."""


def _number(value) -> bool:
    """An int or a float; NaN and infinities too: summaries written before ``io/strict_json.py``
    held a missing or diverged loss as a bare ``NaN`` (now ``null``, which the loss items accept)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# item -> (check, what it must be); None passes for the optional numbers
_ITEMS = {
    "algorithm": (lambda v: isinstance(v, str) and v != "", "a name"),
    "workers": (lambda v: _count(v) and v >= 1, "a positive integer"),
    "steps": (_count, "a non-negative integer"),
    "bytes_up": (_count, "a non-negative integer"),
    "bytes_down": (_count, "a non-negative integer"),
    "compression_up": (lambda v: _number(v) and v > 0, "a positive number"),
    "compression_down": (lambda v: _number(v) and v > 0, "a positive number"),
    "wall_seconds": (lambda v: _number(v) and math.isfinite(v) and v >= 0, "a non-negative number"),
    "final_test_loss": (lambda v: v is None or _number(v), "a number or null"),
    "final_test_accuracy": (lambda v: v is None or _number(v), "a number or null"),
}
_OPTIONAL = {"final_test_accuracy"}


def read_summary(path: Path) -> dict:
    """The checked contents of ``path`` (a run's ``summary.json``)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SummaryError(f"{path}: cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise SummaryError(f"{path}: not a regular file")
    if info.st_size > MAX_SUMMARY_BYTES:
        raise SummaryError(f"{path}: {info.st_size} bytes, more than a summary's {MAX_SUMMARY_BYTES}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SUMMARY_BYTES + 1)
        summary = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise SummaryError(f"{path}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise SummaryError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SummaryError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise SummaryError(f"{path}: a JSON {type(summary).__name__}, not the object a run writes")
    for key, (ok, what) in _ITEMS.items():
        if key not in summary:
            if key in _OPTIONAL:
                continue
            raise SummaryError(f"{path}: no {key!r} (not a finished qtrain run's summary)")
        if not ok(summary[key]):
            raise SummaryError(f"{path}: {key!r} is {summary[key]!r}, not {what}")
    for link in ("uplink", "downlink"):
        value = summary.get(link)
        if not isinstance(value, dict) or not isinstance(value.get("codec"), str):
            raise SummaryError(f"{path}: {link!r} is {value!r}, not a link with a codec name")
    _check_evals(path, summary.get("evals", []))
    return summary


def _check_evals(path: Path, evals) -> None:
    if not isinstance(evals, list):
        raise SummaryError(f"{path}: 'evals' is {type(evals).__name__}, not a list")
    for i, ev in enumerate(evals):
        if not isinstance(ev, dict) or not _count(ev.get("step")):
            raise SummaryError(f"{path}: evals[{i}] is not an evaluation with an integer step")
        for key, value in ev.items():
            if key != "step" and not (value is None or _number(value)):
                raise SummaryError(f"{path}: evals[{i}].{key} is {value!r}, not a number")
