"""The words of a rules file: the keys every rule has (``COMMON``), how a key is read
(``Option`` and the parsers a kind's ``options`` use), and what a rule is once read
(``AlertRule``). The kinds (``kinds/``) take their keys from here; the loader (rules.py)
puts the file, the common keys and each kind's keys together.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from connstats.probe.contract import ConfigError, MessageError, proto_number
from connstats.probe.runtime.durations import duration_value

from .table import FIELDS, Where

NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SEVERITIES = ("info", "warning", "critical")
METRICS = ("packets", "bytes", "connections")


class Invalid(Exception):
    """One key's problem, ``what; what to do``; ``load_rules`` adds where it is."""


@dataclass(frozen=True)
class Option:
    """One key of a rule: how to read it, and its default (``required``: no default)."""

    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class AlertRule:
    """One rule of a rules file, its keys parsed: the common ones, then its kind's (``options``)."""

    name: str
    kind: str
    severity: str = "warning"
    for_ns: int = 0
    repeat_ns: int = 60 * 10**9
    cap: int = 20
    by: tuple[str, ...] = ()
    where: Where = ()
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)  # the kind's own keys, parsed

    def option(self, key: str) -> Any:
        return self.options[key]


# -- parsers of values --------------------------------------------------------------------


def duration(value: Any) -> int:
    """A duration (probe/runtime/durations.py), as text: ``for = 30`` has no unit."""
    try:
        return duration_value(value)
    except ConfigError as exc:
        raise Invalid(str(exc)) from None


def positive_duration(value: Any) -> int:
    """A duration above 0: a window of "0s" holds no interval."""
    try:
        return duration_value(value, positive=True)
    except ConfigError as exc:
        raise Invalid(str(exc)) from None


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{value!r} is not a number; write e.g. 1000 or 0.5")
    if not math.isfinite(value):  # TOML has nan and inf; no count compares with them
        raise Invalid(f"{value!r} is not a finite number; write e.g. 1000 or 0.5")
    return value


def positive_number(value: Any) -> float:
    if number(value) <= 0:
        raise Invalid(f"{value!r} is not above 0; use a positive number")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"{value!r} is not a whole number of at least 1")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{value!r} is not text; quote it")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise Invalid(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return parse


def field_name(value: Any) -> str:
    if value not in FIELDS:
        raise Invalid(f"unknown field {value!r}; use one of {', '.join(FIELDS)}")
    return value


def field_list(allowed: tuple[str, ...] = FIELDS) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise Invalid(f"{value!r} is not a list of fields; write e.g. [\"ifname\", \"dst_port\"]")
        for name in value:
            if name not in allowed:
                raise Invalid(f"unknown field {name!r}; use one of {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise Invalid("a field is named twice; name each once")
        return tuple(value)
    return parse


def where(value: Any) -> Where:
    """``{field = value or [values]}``; ``proto`` also by name (``"udp"``)."""
    if not isinstance(value, dict):
        raise Invalid(f"{value!r} is not a table; write e.g. {{ proto = \"udp\", direction = \"egress\" }}")
    conditions = []
    for name, wanted in sorted(value.items()):
        field_name(name)
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or any(isinstance(v, (dict, list, float, bool)) for v in values):
            raise Invalid(f"{name} = {wanted!r}: compare with text, a whole number or a list of them")
        conditions.append((name, frozenset(_proto(v) if name == "proto" else v for v in values)))
    return tuple(conditions)


def _proto(value: Any) -> int:
    if isinstance(value, int):
        return value
    try:
        return proto_number(value)
    except MessageError as exc:
        raise Invalid(str(exc)) from None


COMMON: dict[str, Option] = {
    "name": Option(text, required=True),
    "kind": Option(text, required=True),
    "severity": Option(one_of(*SEVERITIES), "warning"),
    "for": Option(duration, 0),
    "repeat": Option(duration, 60 * 10**9),
    "cap": Option(positive_int, 20),
    "description": Option(text, ""),
}
