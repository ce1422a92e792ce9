"""Durations as connstats reads them everywhere (``--retention``, ``history --since`` and
``--every``, alert windows and ``for``, the web page's buckets): ``15m``, ``1h30m``,
``0.5s``, in integer nanoseconds. The one duration parser: ``parse_duration`` for text,
``duration_value`` for a settings file's value, ``duration_seconds`` for settings kept in
seconds. A bad one is a ``ConfigError`` of one line saying what to write instead.
"""
from __future__ import annotations

import re
from fractions import Fraction

from ..contract.errors import ConfigError

_NS = 1_000_000_000
MAX_DURATION = 200 * 365 * 86400 * _NS  # also keeps every time and width below 2**63 ns
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h|d|w)")  # ASCII digits only
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": _NS, "m": 60 * _NS, "h": 3600 * _NS,
            "d": 86400 * _NS, "w": 7 * 86400 * _NS}
_SHOWN = 40  # characters of a bad duration an error shows


def parse_duration(text: str, *, positive: bool = False) -> int:
    """``15m``, ``1h30m``, ``0.5s`` -> nanoseconds (exact, fractions of a nanosecond cut;
    at most 200 years); with ``positive``, ``0s`` is refused too."""
    text = text.strip()
    parts = _parts(text)
    if parts is None:
        raise ConfigError(f"{_shown(text)} is not a duration; use e.g. 30s, 15m, 2h, 1d")
    if sum(len(n) for n, _ in parts) > _SHOWN:
        raise ConfigError(f"{_shown(text)} is longer than 200 years; use a shorter duration")
    ns = int(sum(Fraction(n) * _UNIT_NS[u] for n, u in parts))
    if ns > MAX_DURATION:
        raise ConfigError(f"{text!r} is longer than 200 years; use a shorter duration")
    if positive and ns <= 0:
        raise ConfigError(f"{text!r} is no time at all; use a duration above 0, e.g. \"30s\"")
    return ns


def duration_value(value: object, *, positive: bool = False) -> int:
    """A duration from a settings file (TOML): only text has a unit, so ``30`` is refused."""
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a duration; write it as text, e.g. \"30s\"")
    return parse_duration(value, positive=positive)


def duration_seconds(text: str) -> float:
    """``parse_duration`` in seconds, for settings kept in seconds (``--retention``)."""
    return parse_duration(text) / _NS


def is_duration(text: str) -> bool:
    """True if ``text`` is a duration as ``parse_duration`` reads it."""
    return _parts(text.strip()) is not None


def _parts(text: str) -> list[tuple[str, str]] | None:
    """(number, unit) pairs that make up all of ``text``; None if they do not."""
    parts: list[tuple[str, str]] = _DURATION.findall(text)
    return parts if parts and "".join(n + u for n, u in parts) == text else None


def _shown(text: str) -> str:
    """``text`` quoted for an error message, its first ``_SHOWN`` characters if longer."""
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}..."
