"""The policy file: TOML in, a checked ``Policy`` out (or a ``PolicyError`` naming line and key),
and a ``Policy`` back out as TOML (``format_policy``; ``policy learn`` writes through it).

    [groups]
    web    = { containers = ["web*"] }      # container name globs
    db     = { containers = ["db"] }
    client = { cidrs = ["10.0.7.0/24"] }    # v4 and v6 prefixes
    shop   = { k8s_namespaces = ["shop"], labels = { app = "web" } }   # pods: every pod selector matches
    # also images = [...], ifaces = [...], netns = [...], pods = ["shop/web-*"]; built in: host, world

    [[allow]]
    from = "web"
    to = "db"
    proto = "tcp"            # tcp | udp | icmp | icmpv6 | a number 0-255
    ports = [5432, "8000-8099"]   # server ports; omit for any

``tomllib`` reports syntax errors with their line; for a key whose value is wrong the line is
found in the text (``key_line``), so every error reads ``<file> line N: <key>: what; what to do``.

``format_policy`` writes groups and rules in the model's order; what it writes parses back
to the same ``Policy`` (tests/policy/test_policy.py).
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable

from .bounded import loads_toml
from .errors import MessageError, PolicyError
from .record import PROTO_NAMES, PROTO_NUMBERS

BUILTIN_GROUPS = ("host", "world")
MAX_GROUPS = 64  # one bit each in the kernel's masks, built-ins included
MAX_NAME = 63  # characters of a group name
MAX_RULES = 4096
# The kernel's address trie holds 65,536 entries (POLICY_PREFIXES in probe/kernel/flows_structs.h) for both
# table sets: the policy in force and the one being built. Room is left for the addresses
# of the devices and the host.
MAX_PREFIXES = 32_000
SELECTORS = ("containers", "images", "ifaces", "netns", "pods", "k8s_namespaces", "labels", "cidrs")
POD_SELECTORS = ("pods", "k8s_namespaces", "labels")  # a pod matches a group's when it matches each it has
MAX_LABELS = 32  # label pairs of one group
# Kubernetes' own limits: a label name is 63 characters, with a DNS subdomain prefix of up to 253 and
# "/" before it; a value is at most 63, possibly empty. Names and values start and end alphanumeric.
_LABEL_PART = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_LABEL_PART}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_PART})?$")
PORTED_PROTOCOLS = (6, 17, 132, 136)  # tcp, udp, sctp, udplite: the classifier reads their ports
_NAME = re.compile(rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes
_RULE_KEYS = ("from", "to", "proto", "ports")
KeyPath = tuple[str | int, ...]  # of a value in the file: ("allow", 2, "ports"), ("groups", "web", "cidrs")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Group:
    """A named set of endpoints: devices (and their containers' addresses) and prefixes.

    ``pods`` (globs over "<k8s namespace>/<pod name>"), ``k8s_namespaces`` (globs) and
    ``labels`` (pairs, sorted, each equal to one of the pod's) select pods together: a pod
    is in the group when it matches every one of them the group has. The group is the union
    of that and its other selectors."""

    name: str
    containers: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    ifaces: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    k8s_namespaces: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    cidrs: tuple[Network, ...] = ()

    @property
    def selects_devices(self) -> bool:
        return bool(self.containers or self.images or self.ifaces or self.netns or self.selects_pods)

    @property
    def selects_pods(self) -> bool:
        return any(getattr(self, key) for key in POD_SELECTORS)


@dataclass(frozen=True)
class PolicyRule:
    """An ``[[allow]]``: ``source`` may open ``proto`` connections to ``target`` on ``ports`` (() = any port)."""

    source: str
    target: str
    proto: int
    ports: tuple[tuple[int, int], ...] = ()  # inclusive ranges


@dataclass(frozen=True)
class Policy:
    groups: tuple[Group, ...]
    rules: tuple[PolicyRule, ...]
    text: str = field(default="", compare=False)  # the file as given (kept, shown, re-applied)

    @property
    def group_names(self) -> tuple[str, ...]:
        """Every group in bit order: the built-ins first."""
        return BUILTIN_GROUPS + tuple(g.name for g in self.groups)

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and check a policy file; raise ``PolicyError`` naming the line and the key."""
    try:
        document = loads_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML ({exc}); fix the syntax") from None
    except MessageError as exc:
        raise PolicyError(f"{source}: {exc}") from None
    where = _Locator(text, source)
    for key in document:
        if key not in ("groups", "allow"):
            raise PolicyError(where.at((key,), f"unknown section {key!r}; use [groups] and [[allow]]"))
    groups = _groups(document.get("groups", {}), where)
    known = set(BUILTIN_GROUPS) | {g.name for g in groups}
    rules = _rules(document.get("allow", []), known, where)
    return Policy(groups, rules, text)


# -- groups -------------------------------------------------------------------------------


def _groups(table: Any, where: _Locator) -> tuple[Group, ...]:
    if not isinstance(table, dict):
        raise PolicyError(where.at(("groups",), "must be a table of groups; write [groups]"))
    if len(table) + len(BUILTIN_GROUPS) > MAX_GROUPS:
        raise PolicyError(where.at(("groups",), f"{len(table)} groups; at most "
                                   f"{MAX_GROUPS - len(BUILTIN_GROUPS)} fit, merge some"))
    groups = tuple(_group(name, body, where) for name, body in table.items())
    prefixes = len({net for group in groups for net in group.cidrs})
    if prefixes > MAX_PREFIXES:
        raise PolicyError(where.at(("groups",), f"{prefixes:,} distinct prefixes in all; at most "
                                   f"{MAX_PREFIXES:,} fit the kernel's tables, merge some"))
    return groups


def _group(name: str, body: Any, where: _Locator) -> Group:
    path = ("groups", name)
    if name in BUILTIN_GROUPS:
        raise PolicyError(where.at(path, f"{name!r} is built in; give the group another name"))
    if not _NAME.match(name):
        raise PolicyError(where.at(path, "a group name is letters, digits, '_', '-' and '.'; rename it"))
    if not isinstance(body, dict) or not body:
        raise PolicyError(where.at(path, f"must be a table with one of {', '.join(SELECTORS)}, "
                                   'e.g. { containers = ["web*"] }'))
    values: dict[str, tuple[str, ...]] = {}
    labels: tuple[tuple[str, str], ...] = ()
    for key, value in body.items():
        if key not in SELECTORS:
            raise PolicyError(where.at(path + (key,), f"unknown key; use {', '.join(SELECTORS)}"))
        if key == "labels":
            labels = _labels(value, where, path + (key,))
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PolicyError(where.at(path + (key,), 'must be a list of non-empty strings, e.g. '
                                       + _EXAMPLES.get(key, '["web*"]')))
        for text in value:
            _check_glob(key, text, where, path + (key,))
        values[key] = tuple(value)
    cidrs = tuple(_network(text, where, path + ("cidrs",)) for text in values.pop("cidrs", ()))
    return Group(name, **values, labels=labels, cidrs=cidrs)


_EXAMPLES = {"pods": '["shop/web-*"]', "k8s_namespaces": '["shop"]'}


def _check_glob(key: str, text: str, where: _Locator, path: KeyPath) -> None:
    """A pod glob names the namespace and the pod; a namespace glob only the namespace."""
    if key == "pods" and "/" not in text:
        raise PolicyError(where.at(path, f"{text!r} has no '/'; write <namespace>/<pod name>, globs allowed, "
                                   'e.g. "shop/web-*" or "*/web-*"'))
    if key == "k8s_namespaces" and "/" in text:
        raise PolicyError(where.at(path, f"{text!r} is not a namespace name (no '/'); select pods with "
                                   'pods = ["<namespace>/<pod name>"]'))


def _labels(value: Any, where: _Locator, path: KeyPath) -> tuple[tuple[str, str], ...]:
    """``{ app = "web", "app.kubernetes.io/name" = "shop" }`` as sorted pairs."""
    if not isinstance(value, dict) or not value:
        raise PolicyError(where.at(path, 'must be a table of at least one label, e.g. labels = { app = "web" }'))
    if len(value) > MAX_LABELS:
        raise PolicyError(where.at(path, f"{len(value)} labels; at most {MAX_LABELS}, keep the ones that decide"))
    for key, text in value.items():
        if not isinstance(text, str):
            hint = ("; quote a name with dots, e.g. \"app.kubernetes.io/name\" = \"web\""
                    if isinstance(text, dict) else "")
            raise PolicyError(where.at(path, f"the value of {key!r} is not a string; write e.g. "
                                       f'{_key(key)} = "web"{hint}'))
        if not _LABEL_KEY.match(key):
            raise PolicyError(where.at(path, f"{key!r} is not a Kubernetes label name (an optional DNS prefix "
                                       "and '/', then up to 63 letters, digits, '-', '_', '.'); fix it"))
        if not _LABEL_VALUE.match(text):
            raise PolicyError(where.at(path, f"the value {text!r} of {key!r} is not a Kubernetes label value "
                                       "(up to 63 letters, digits, '-', '_', '.', alphanumeric at both ends); "
                                       "fix it"))
    return tuple(sorted(value.items()))


def _network(text: str, where: _Locator, path: KeyPath) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PolicyError(where.at(path, f"{text!r} is not an address prefix; write e.g. "
                                   "10.0.7.0/24 or fd00::/64")) from None


# -- rules --------------------------------------------------------------------------------


def _rules(items: Any, known: set[str], where: _Locator) -> tuple[PolicyRule, ...]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise PolicyError(where.at(("allow",), "must be tables; write [[allow]] above each rule"))
    if len(items) > MAX_RULES:
        raise PolicyError(where.at(("allow",), f"{len(items)} rules; at most {MAX_RULES}, merge some"))
    return tuple(_rule(i, item, known, where) for i, item in enumerate(items))


def _rule(index: int, item: dict[str, Any], known: set[str], where: _Locator) -> PolicyRule:
    path = ("allow", index)
    for key in item:
        if key not in _RULE_KEYS:
            raise PolicyError(where.at(path + (key,), f"unknown key; use {', '.join(_RULE_KEYS)}"))
    ends = []
    for key in ("from", "to"):
        value = item.get(key)
        if not isinstance(value, str):
            raise PolicyError(where.at(path + (key,), 'is missing or not a group name; write e.g. from = "web"'))
        if value not in known:
            raise PolicyError(where.at(path + (key,), f"no group {value!r}; define it under [groups] "
                                       "or use host or world"))
        ends.append(value)
    proto = _proto(item.get("proto"), where, path + ("proto",))
    ports = _ports(item.get("ports"), proto, where, path + ("ports",))
    return PolicyRule(ends[0], ends[1], proto, ports)


def _proto(value: Any, where: _Locator, path: KeyPath) -> int:
    if isinstance(value, str) and value in PROTO_NUMBERS:
        return PROTO_NUMBERS[value]
    if type(value) is int and 0 <= value <= 255:
        return value
    shown = "missing" if value is None else repr(value)
    raise PolicyError(where.at(path, f"{shown} is not tcp, udp, icmp, icmpv6 or a protocol number 0-255; "
                               'write e.g. proto = "tcp"'))


def _ports(value: Any, proto: int, where: _Locator, path: KeyPath) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if proto not in PORTED_PROTOCOLS:
        raise PolicyError(where.at(path, "only tcp, udp, sctp and udplite have ports; leave ports out"))
    if not isinstance(value, list) or not value:
        raise PolicyError(where.at(path, 'must be a non-empty list, e.g. [5432, "8000-8099"]; '
                                   "leave it out for any port"))
    return tuple(sorted(_port_range(v, where, path) for v in value))


def _port_range(value: Any, where: _Locator, path: KeyPath) -> tuple[int, int]:
    if type(value) is int and 0 <= value <= 65535:
        return value, value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value.strip())
        if match:
            low, high = int(match[1]), int(match[2])
            if low <= high <= 65535:
                return low, high
    raise PolicyError(where.at(path, f"{value!r} is not a port 0-65535 or a range like \"8000-8099\"; "
                               "fix it"))


# -- writing ------------------------------------------------------------------------------


def format_policy(policy: Policy, header: Iterable[str] = ()) -> str:
    """The policy file of ``policy``: ``header`` as comment lines, ``[groups]``, then an
    ``[[allow]]`` per rule, in the model's order; ``parse_policy`` reads it back as ``policy``."""
    lines = [f"# {_comment(line)}" for line in header]
    lines.append("[groups]")
    for group in policy.groups:
        selectors = ", ".join(f"{key} = {text}" for key, text in _selectors(group))
        lines.append(f"{_key(group.name)} = {{ {selectors} }}")
    for rule in policy.rules:
        lines += ["", "[[allow]]", f"from = {_string(rule.source)}", f"to = {_string(rule.target)}",
                  f"proto = {_proto_text(rule.proto)}"]
        if rule.ports:
            lines.append(f"ports = {_array(low if low == high else f'{low}-{high}' for low, high in rule.ports)}")
    return "\n".join(lines) + "\n"


def _selectors(group: Group) -> list[tuple[str, str]]:
    """A group's non-empty selectors, in ``SELECTORS`` order, as TOML values."""
    out = []
    for key in SELECTORS:
        values = getattr(group, key)
        if not values:
            continue
        if key == "labels":
            out.append((key, "{ " + ", ".join(f"{_key(k)} = {_string(v)}" for k, v in values) + " }"))
        else:
            out.append((key, _array(str(value) for value in values)))
    return out


def _string(text: str) -> str:
    """A TOML basic string (escapes as TOML has them: \\", \\\\, \\uXXXX for control characters)."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out) + '"'


def _comment(text: str) -> str:
    """Comment text on one line: control characters (a newline in a host name) shown escaped."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F else c for c in text)


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _array(values: Iterable[int | str]) -> str:
    return "[" + ", ".join(str(v) if isinstance(v, int) else _string(v) for v in values) + "]"


def _proto_text(number: int) -> str:
    return _string(PROTO_NAMES[number]) if number in PROTO_NAMES else str(number)


# -- finding a key's line -----------------------------------------------------------------


class _Locator:
    """Finds the line of a key in the text (tomllib keeps no positions)."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def at(self, path: KeyPath, message: str) -> str:
        return f"{self.source} line {self.line(path)}: {_dotted(path)}: {message}"

    def line(self, path: KeyPath) -> int:
        if path[0] == "allow" and len(path) > 1 and isinstance(path[1], int):  # ("allow", rule index, ...)
            return self._in_table(_nth_header(self.lines, "[[allow]]", path[1]), path[2:])
        if path[0] == "groups" and len(path) > 1:
            header = _nth_header(self.lines, f"[groups.{path[1]}]", 0)
            if header is not None:
                return self._in_table(header, path[2:])
            return self._in_table(_nth_header(self.lines, "[groups]", 0), path[1:2])
        found = _first_match(self.lines, 0, rf"\s*(\[+\s*)?{re.escape(str(path[0]))}\b")
        return found + 1 if found is not None else 1

    def _in_table(self, header: int | None, keys: KeyPath) -> int:
        if header is None:
            return 1
        if not keys:
            return header + 1
        end = next((i for i in range(header + 1, len(self.lines)) if self.lines[i].lstrip().startswith("[")),
                   len(self.lines))
        found = _first_match(self.lines[:end], header + 1, rf"\s*[\"']?{re.escape(str(keys[0]))}[\"']?\s*=")
        return (found if found is not None else header) + 1


def _nth_header(lines: list[str], header: str, n: int) -> int | None:
    seen = -1
    squeezed = header.replace(" ", "")
    for i, line in enumerate(lines):
        if line.split("#", 1)[0].replace(" ", "").strip() == squeezed:
            seen += 1
            if seen == n:
                return i
    return None


def _first_match(lines: list[str], start: int, pattern: str) -> int | None:
    compiled = re.compile(pattern)
    return next((i for i in range(start, len(lines)) if compiled.match(lines[i])), None)


def _dotted(path: KeyPath) -> str:
    text = str(path[0])
    for part in path[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
