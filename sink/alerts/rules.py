"""The rules file: TOML, one ``[[rule]]`` table per rule, checked completely at start.

Keys every rule has (``COMMON``), then the keys of its kind (``Kind.options``, see
``kinds/``). Every mistake is one line naming the file, the rule and the key::

    rules.toml: rule 'udp-burst': key 'window': '30x' is not a duration; use e.g. 30s, 15m, 2h, 1d

``load_rules(path)`` returns the ``Rule``s or raises ``RuleError`` (a ``ConfigError``).
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from connstats.probe.contract import ConfigError, MessageError, loads_toml, proto_number
from connstats.probe.runtime.durations import duration_value

from .table import FIELDS, Where

NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SEVERITIES = ("info", "warning", "critical")
METRICS = ("packets", "bytes", "connections")


class RuleError(ConfigError):
    """A rules file that cannot be used."""


class Invalid(Exception):
    """One key's problem, ``what; what to do``; ``load_rules`` adds where it is."""


@dataclass(frozen=True)
class Option:
    """One key of a rule: how to read it, and its default (``required``: no default)."""

    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class Rule:
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


# -- the file ------------------------------------------------------------------------------


def load_rules(path: str | Path) -> list[Rule]:
    path = Path(path)
    try:
        document = loads_toml(path.read_text())
    except OSError as exc:
        raise RuleError(f"cannot read rules file {path}: {exc.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise RuleError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path} is not valid TOML ({exc}); fix it") from None
    except MessageError as exc:
        raise RuleError(f"{path}: {exc}") from None
    return parse_rules(document, str(path))


def parse_rules(document: dict, where_from: str = "rules") -> list[Rule]:
    extra = sorted(set(document) - {"rule"})
    if extra:
        raise RuleError(f"{where_from}: unknown table {extra[0]!r}; rules are [[rule]] tables")
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not tables:
        raise RuleError(f"{where_from}: no [[rule]] table; add at least one rule")
    rules = [parse_rule(table, index, where_from) for index, table in enumerate(tables, 1)]
    names = [r.name for r in rules]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise RuleError(f"{where_from}: rule {twice!r}: the name is used twice; give each rule its own name")
    return rules


def parse_rule(table: dict, index: int, where_from: str = "rules") -> Rule:
    from .kinds import KINDS

    label = f"rule #{index}"
    if isinstance(table.get("name"), str) and NAME.match(table["name"]):
        label = f"rule {table['name']!r}"

    def fail(key: str, problem: str) -> RuleError:
        return RuleError(f"{where_from}: {label}: key {key!r}: {problem}")

    if "name" in table and not (isinstance(table["name"], str) and NAME.match(table["name"])):
        raise fail("name", f"{table['name']!r} is not a name of 1-128 letters, digits or _.:-; rename it")
    kind = KINDS.get(table.get("kind")) if isinstance(table.get("kind"), str) else None
    if "kind" in table and kind is None:
        raise fail("kind", f"unknown kind {table['kind']!r}; use one of {', '.join(KINDS)}")
    options = {**COMMON, **(kind.options if kind else {})}
    for key in table:
        if key not in options:
            raise fail(key, f"unknown key for kind {table.get('kind')!r}; use one of {', '.join(options)}")
    values = {}
    for key, option in options.items():
        if key not in table:
            if option.required:
                needs = "every rule" if key in COMMON else f"a {table['kind']} rule"
                raise fail(key, f"missing; {needs} needs it")
            values[key] = option.default
            continue
        try:
            values[key] = option.parse(table[key])
        except Invalid as exc:
            raise fail(key, str(exc)) from None
    try:
        kind.check(values)
    except Invalid as exc:
        key, _, problem = str(exc).partition(": ")
        raise fail(key, problem) from None
    own = {k: v for k, v in values.items() if k not in COMMON and k not in ("by", "where")}
    return Rule(values["name"], values["kind"], values["severity"], values["for"], values["repeat"],
                values["cap"], values.get("by") or (), values.get("where") or (), values["description"], own)
