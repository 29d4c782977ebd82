"""Rates and times as users type them: ``1gbit``, ``100mbit``; ``0.1ms``, ``50us``."""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_rate(text: str) -> float:
    """``"1gbit"``, ``"100mbit"``, ``"2.5gbit"`` -> bits per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)bit\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bandwidth {text!r}: expected a positive rate such as 1gbit or 100mbit")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_latency(text: str) -> float:
    """``"0.1ms"``, ``"50us"``, ``"0"`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|ms|us)?\s*", text.lower())
    if not m:
        raise ValueError(f"latency {text!r}: expected a time such as 0.1ms or 50us")
    return float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]
