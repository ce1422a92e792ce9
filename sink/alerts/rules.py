"""The rules file: TOML, one ``[[rule]]`` table per rule, checked completely at start.

Keys every rule has (``COMMON``, rule_keys.py), then the keys of its kind (``Kind.options``,
see ``kinds/``). Every mistake is one line naming the file, the rule and the key::

    rules.toml: rule 'udp-burst': key 'window': '30x' is not a duration; use e.g. 30s, 15m, 2h, 1d

``load_rules(path)`` returns the ``AlertRule``s or raises ``RuleError`` (a ``ConfigError``).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from connstats.probe.contract import ConfigError, MessageError, loads_toml

from .kinds import KINDS
from .rule_keys import COMMON, NAME, AlertRule, Invalid


class RuleError(ConfigError):
    """A rules file that cannot be used."""


def load_rules(path: str | Path) -> list[AlertRule]:
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


def parse_rules(document: dict, where_from: str = "rules") -> list[AlertRule]:
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


def parse_rule(table: dict, index: int, where_from: str = "rules") -> AlertRule:
    label = f"rule #{index}"
    if isinstance(table.get("name"), str) and NAME.match(table["name"]):
        label = f"rule {table['name']!r}"

    def fail(key: str, problem: str) -> RuleError:
        return RuleError(f"{where_from}: {label}: key {key!r}: {problem}")

    if "name" in table and not (isinstance(table["name"], str) and NAME.match(table["name"])):
        raise fail("name", f"{table['name']!r} is not a name of 1-128 letters, digits or _.:-; rename it")
    kind_name = table.get("kind")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
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
    assert kind is not None  # COMMON makes "kind" required: a rule without a known kind failed above
    try:
        kind.check(values)
    except Invalid as exc:
        key, _, problem = str(exc).partition(": ")
        raise fail(key, problem) from None
    own = {k: v for k, v in values.items() if k not in COMMON and k not in ("by", "where")}
    return AlertRule(values["name"], values["kind"], values["severity"], values["for"], values["repeat"],
                values["cap"], values.get("by") or (), values.get("where") or (), values["description"], own)
