"""Durations as connstats reads them everywhere (``--retention``, ``history --since`` and
``--every``, alert windows, the web page's buckets): ``15m``, ``1h30m``, ``0.5s``, in
integer nanoseconds."""
from __future__ import annotations

import re
from fractions import Fraction

from ..contract.errors import ConfigError

_NS = 1_000_000_000
MAX_DURATION = 200 * 365 * 86400 * _NS  # also keeps every time and width below 2**63 ns
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": _NS, "m": 60 * _NS, "h": 3600 * _NS,
            "d": 86400 * _NS, "w": 7 * 86400 * _NS}


def parse_duration(text: str) -> int:
    """``15m``, ``1h30m``, ``0.5s`` -> nanoseconds (exact; at most 200 years)."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{text!r} is not a duration; use e.g. 30s, 15m, 2h, 1d")
    if sum(len(n) for n, _ in parts) > 40:
        raise ConfigError(f"{text[:40]!r}... is longer than 200 years; use a shorter duration")
    ns = int(sum(Fraction(n) * _UNIT_NS[u] for n, u in parts))
    if ns > MAX_DURATION:
        raise ConfigError(f"{text!r} is longer than 200 years; use a shorter duration")
    return ns


def is_duration(text: str) -> bool:
    """True if ``text`` is a duration as ``parse_duration`` reads it."""
    parts = _DURATION.findall(text.strip())
    return bool(parts) and "".join(n + u for n, u in parts) == text.strip()
