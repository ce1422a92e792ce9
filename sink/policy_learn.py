"""``connstats policy learn``: the policy with the fewest rules that allows the traffic seen.

The store does the heavy part: ``HistoryQuery(group_by="service")`` (sink/history.py) adds
up every record of the range in SQL (or, for InfluxDB, per point from Flux) into one row
per device, container, direction, protocol, address pair and server port, with the
number of client ports; client ports never reach Python. ``learn_policy`` turns those
rows into groups and rules:

- the device a row was counted on is its *local* end (the source of what it sends,
  ``egress``, the destination of what it receives); the device is a group: a Kubernetes
  pod's workload (``pods``, see ``pod_glob``), a Docker container (``containers``), a
  netns-only container (``netns``), or, with no container, the device itself (``ifaces``);
- the other end, the *peer*, is the group of the container that address belongs to (an
  address seen as the local end on that container's device), else ``host`` (one of this
  host's addresses, which the caller gives), else ``world`` or, with ``peers="prefix"``,
  a group per /24 (IPv4) or /64 (IPv6) prefix that holds no address of a group or the host;
- the server is the side ``sink/store.py`` ``server_side`` names (the service port rule);
  when both ports are equal (ICMP, NTP), the side whose first packet came first, and both
  sides when the first packets carry the same time;
- one rule per (from, to, protocol), its server ports merged into ranges; protocols
  without ports (ICMP, ...) allow any;
- ARP and other non-IP frames, IPv6 neighbour discovery (ICMPv6 to or from link-local
  and multicast addresses) and DHCP are never blocked, so they get no rule.

``learn_policy`` builds the policy file's own model (``Policy``, ``Group``, ``PolicyRule`` of
probe/contract/policy_file.py); ``learned_policy_text`` writes it with that module's
``format_policy`` and checks the text as the probe will, with ``parse_policy``.
"""
from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from connstats.probe.contract import ConfigError, proto_number
from connstats.probe.contract.policy_file import (
    BUILTIN_GROUPS,
    MAX_GROUPS,
    MAX_NAME,
    PORTED_PROTOCOLS,
    Group,
    Policy,
    PolicyRule,
    format_policy,
    parse_policy,
)
from connstats.sink.history import HistoryQuery

_ICMPV6 = 58
_DHCP_PORTS = (67, 546)  # the service port of DHCP (67/68) and DHCPv6 (546/547): the lower one
_KIND_ORDER = ("pods", "containers", "netns", "ifaces", "cidrs")
# The characters Kubernetes draws generated name suffixes from (its rand.String and the
# pod-template-hash's SafeEncodeString): no vowels, no 0, 1 or 3, so a word is rarely one.
_GENERATED = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_SUFFIXES = (
    re.compile(rf"^(.+)-{_GENERATED}{{6,10}}-{_GENERATED}{{5}}$"),  # Deployment: <name>-<hash>-<xxxxx>
    re.compile(rf"^(.+)-{_GENERATED}{{5}}$"),  # DaemonSet, Job, ReplicaSet: <name>-<xxxxx>
    re.compile(r"^(.+)-(0|[1-9][0-9]{0,8})$"),  # StatefulSet: <name>-<ordinal>
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PeerSettings:
    """How outside peers become groups: all ``world``, or one group per prefix."""

    mode: str = "world"  # world | prefix
    prefix4: int = 24
    prefix6: int = 64

    def __post_init__(self) -> None:
        if self.mode not in ("world", "prefix"):
            raise ConfigError(f"--peers {self.mode!r} is not world or prefix")
        if not 0 <= self.prefix4 <= 32:
            raise ConfigError(f"--prefix4 {self.prefix4} is not between 0 and 32")
        if not 0 <= self.prefix6 <= 128:
            raise ConfigError(f"--prefix6 {self.prefix6} is not between 0 and 128")


@dataclass(frozen=True)
class LearnedPolicy:
    """The policy learned, and the connections and bytes of the range it allows."""

    policy: Policy
    connections: int = 0
    bytes: int = 0


@dataclass(frozen=True, order=True)
class _Group:
    """A group before it has a name: its kind (a ``Group`` selector, ``_KIND_ORDER``) and value."""

    kind: str
    value: str


@dataclass
class _Row:
    device: _Group
    src: Address
    dst: Address
    local: Address
    proto: int
    port: int
    server: str
    bytes: int
    connections: int
    first_seen: int
    ifname: str


def learn_query(since: int, until: int, host: str | None) -> HistoryQuery:
    return HistoryQuery(since=since, until=until, host=host, group_by="service")


# -- rows in, policy out ------------------------------------------------------------------------


def learn_policy(rows: Iterable[dict], *, host_addresses: Iterable[str] = (),
                 peers: PeerSettings = PeerSettings()) -> LearnedPolicy:
    """The fewest rules that allow every row (from ``learn_query``); see the module docstring."""
    kept = [row for row in map(_parsed, rows) if row is not None]
    resolver = _PeerGroups(*_owners(kept, host_addresses), peers)
    rules: dict[tuple, set[int]] = defaultdict(set)
    seen: dict[tuple, dict[str, list[int]]] = defaultdict(dict)  # connection -> device -> [conns, bytes]
    devices = {row.device for row in kept}
    first = _first_packets(kept)
    for row in kept:
        orientations = _orientations(row, first)
        for client, server in orientations:
            source, target = (row.device if a == row.local else resolver.group(a) for a in (client, server))
            ports = rules[(source, target, row.proto)]
            if row.proto in PORTED_PROTOCOLS:
                ports.add(row.port)
        per_device = seen[(*orientations[0], row.proto, row.port)].setdefault(row.ifname, [0, 0])
        per_device[0] = max(per_device[0], row.connections)  # egress and ingress: the same clients
        per_device[1] += row.bytes
    rules, members = _merge_prefixes(rules)
    names = _names(devices | {g for key in rules for g in key[:2] if isinstance(g, _Group)}, members)
    groups = tuple(_policy_group(names[g], g.kind, [m.value for m in members.get(g, (g,))])
                   for g in sorted(names, key=names.__getitem__))
    policy_rules = sorted((PolicyRule(_name(s, names), _name(t, names), proto, port_ranges(ports))
                           for (s, t, proto), ports in rules.items()), key=lambda r: (r.source, r.target, r.proto))
    return LearnedPolicy(
        Policy(groups, tuple(policy_rules)),
        connections=sum(max(c for c, _ in d.values()) for d in seen.values()),
        bytes=sum(max(b for _, b in d.values()) for d in seen.values()),
    )


def _parsed(row: dict) -> _Row | None:
    """A row as addresses and numbers; None for what no policy blocks (non-IP, ND, DHCP)."""
    try:
        src, dst = ipaddress.ip_address(row["src_ip"]), ipaddress.ip_address(row["dst_ip"])
    except ValueError:
        return None
    proto = proto_number(str(row["proto"]))
    if proto == _ICMPV6 and any(a.is_link_local or a.is_multicast for a in (src, dst)):
        return None
    if proto == 17 and row["port"] in _DHCP_PORTS:
        return None
    if proto in PORTED_PROTOCOLS and row["port"] == 0:  # non-first fragments: part of their connection
        return None
    proto = 1 if proto == _ICMPV6 else proto  # a policy's icmp is ICMP and ICMPv6
    pod = row.get("pod") or ""  # a store without pods (an older file, InfluxDB before them) has none
    device = (_Group("pods", pod_glob(pod)) if pod
              else _Group("containers", row["container_name"]) if row["container_id"]
              else _Group("netns", row["container_name"]) if row["container_name"]
              else _Group("ifaces", row["ifname"]))
    local = src if row["direction"] == "egress" else dst
    return _Row(device, src, dst, local, proto, row["port"], row["server"], row["bytes"],
                row.get("connections", 1), row["first_seen"] or 0, row["ifname"])


def pod_glob(pod: str) -> str:
    """The pods of the workload ``pod`` ("<namespace>/<name>") belongs to, as a ``pods`` glob:
    the name less the suffix Kubernetes generates (a Deployment's pod-template-hash and
    five characters, a DaemonSet's or Job's five, a StatefulSet's ordinal), then ``-*``;
    a name with no such suffix stays as it is (a pod made by hand). So the group still holds
    when the workload's pods are replaced; it also holds other pods whose names begin with
    the same ``<name>-``."""
    namespace, _, name = pod.partition("/")
    for suffix in _POD_SUFFIXES:
        match = suffix.match(name)
        if match:
            return f"{namespace}/{_glob_escaped(match[1])}-*"
    return f"{namespace}/{_glob_escaped(name)}"


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by fnmatch (a pod name has none of *?[, but a store may)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _owners(rows: list[_Row], host_addresses: Iterable[str]) -> tuple[dict[Address, _Group], set[Address]]:
    """Which container each local address belongs to (the first by group order when several
    do), and this host's addresses. A device without a container may be a bridge or a
    router: the local end of what it forwards is somebody else's, so it owns no address."""
    owners: dict[Address, _Group] = {}
    for row in sorted(rows, key=lambda r: r.device, reverse=True):
        if row.device.kind != "ifaces":
            owners[row.local] = row.device
    return owners, {ipaddress.ip_address(a) for a in host_addresses}


def _first_packets(rows: list[_Row]) -> dict[tuple, int]:
    """The first packet's time per (source, destination, protocol, port), for rows whose
    ports cannot tell the server."""
    first: dict[tuple, int] = {}
    for row in rows:
        if row.server == "":
            key = (row.src, row.dst, row.proto, row.port)
            first[key] = min(first.get(key, row.first_seen), row.first_seen)
    return first


def _orientations(row: _Row, first: dict[tuple, int]) -> list[tuple[Address, Address]]:
    """(client, server) of the row's connection; both ways when nothing tells them apart."""
    if row.server == "dst":
        return [(row.src, row.dst)]
    if row.server == "src":
        return [(row.dst, row.src)]
    forth = first.get((row.src, row.dst, row.proto, row.port), row.first_seen)  # _first_packets has it
    back = first.get((row.dst, row.src, row.proto, row.port))
    if back is None or forth < back:
        return [(row.src, row.dst)]
    if forth > back:
        return [(row.dst, row.src)]
    return [(row.src, row.dst), (row.dst, row.src)]


class _PeerGroups:
    """The group of a peer address: its container's, ``host``, ``world`` or its prefix's."""

    def __init__(self, owners: dict[Address, _Group], own: set[Address], peers: PeerSettings) -> None:
        self.owners, self.own, self.peers = owners, own, peers
        self.inside: dict[int, list[Address]] = {4: [a for a in (*owners, *own) if a.version == 4],
                       6: [a for a in (*owners, *own) if a.version == 6]}
        self.prefixes: dict[Address, _Group] = {}

    def group(self, address: Address) -> _Group | str:
        if address in self.owners:
            return self.owners[address]
        if address in self.own:
            return "host"
        if self.peers.mode == "world":
            return "world"
        if address not in self.prefixes:
            self.prefixes[address] = _Group("cidrs", str(self._outside_prefix(address)))
        return self.prefixes[address]

    def _outside_prefix(self, address: Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The peer's prefix (/24, /64), made longer while it would hold an address of a
        group or of this host (a rule for the prefix would allow those too)."""
        length = self.peers.prefix4 if address.version == 4 else self.peers.prefix6
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        while any(a in network for a in self.inside[address.version]):
            length += 1
            network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        return network


def _merge_prefixes(rules: dict[tuple, set[int]]) -> tuple[dict[tuple, set[int]], dict[_Group, list[_Group]]]:
    """Prefix groups allowed exactly the same things become one group of several prefixes
    (one rule instead of one per prefix). Returns the rules on the merged groups and each
    merged group's prefixes (its first prefix stands for the group)."""
    allowed: dict[_Group, set[tuple]] = defaultdict(set)
    for (source, target, proto), ports in rules.items():
        for group, role, other in ((source, "from", target), (target, "to", source)):
            if isinstance(group, _Group) and group.kind == "cidrs":
                allowed[group].add((role, other, proto, frozenset(ports)))
    alike: dict[frozenset, list[_Group]] = defaultdict(list)
    for group in sorted(allowed, key=lambda g: _prefix_order(g.value)):
        alike[frozenset(allowed[group])].append(group)
    first = {group: same[0] for same in alike.values() for group in same}
    merged: dict[tuple, set[int]] = defaultdict(set)
    for (source, target, proto), ports in rules.items():
        merged[(first.get(source, source), first.get(target, target), proto)] |= ports
    return merged, {same[0]: same for same in alike.values() if len(same) > 1}


def _prefix_order(prefix: str) -> tuple:
    network = ipaddress.ip_network(prefix)
    return network.version, network.network_address, network.prefixlen


def _names(groups: set[_Group], members: dict[_Group, list[_Group]] | None = None) -> dict[_Group, str]:
    """A TOML-friendly name per group: the container, netns or device name, the pods' glob
    without ``-*`` ("shop/web-*": shop-web) (characters other than letters, digits, ``_``
    and ``-`` made ``-``), ``net-<prefix>`` for prefixes
    (``net-<first prefix>-and-<n>-more`` for a group of several); a name taken already, or
    built in, gets its kind as suffix."""
    names: dict[_Group, str] = {}
    taken = set(BUILTIN_GROUPS)
    members = members or {}
    for group in sorted(groups, key=lambda g: (_KIND_ORDER.index(g.kind), g.value)):
        base = ("net-" + group.value if group.kind == "cidrs"
                else group.value.removesuffix("-*") if group.kind == "pods" else group.value)
        if len(members.get(group, ())) > 1:
            base += f"-and-{len(members[group]) - 1}-more"
        name = re.sub(r"[^A-Za-z0-9_-]", "-", base).lstrip("-")[:MAX_NAME] or group.kind
        if name in taken:
            name = f"{name[:MAX_NAME - len(group.kind) - 1]}-{group.kind}"
        first, number = name, 2
        while name in taken:
            name = f"{first[:MAX_NAME - len(str(number)) - 1]}_{number}"
            number += 1
        taken.add(name)
        names[group] = name
    return names


def _name(group: _Group | str, names: dict[_Group, str]) -> str:
    return group if isinstance(group, str) else names[group]


def _policy_group(name: str, kind: str, values: list[str]) -> Group:
    match kind:
        case "cidrs":
            return Group(name, cidrs=tuple(ipaddress.ip_network(v) for v in values))
        case "containers":
            return Group(name, containers=tuple(values))
        case "pods":
            return Group(name, pods=tuple(values))
        case "images":
            return Group(name, images=tuple(values))
        case "ifaces":
            return Group(name, ifaces=tuple(values))
        case "netns":
            return Group(name, netns=tuple(values))
    raise ValueError(f"{kind!r} is not a kind of group")


def port_ranges(ports: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted ports with contiguous runs merged into inclusive ranges (a ``PolicyRule``'s):
    ``[80, 8000, 8001, 8002]`` -> ``((80, 80), (8000, 8002))``."""
    out: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if out and port == out[-1][1] + 1:
            out[-1] = (out[-1][0], port)
        else:
            out.append((port, port))
    return tuple(out)


# -- the policy file ---------------------------------------------------------------------------


def learned_policy_text(learned: LearnedPolicy, header: Iterable[str] = ()) -> str:
    """The policy file of ``learned`` (``format_policy``), checked as the probe will check it
    (``parse_policy``); ``ConfigError`` (``PolicyError``) says what is wrong and what to do."""
    room = MAX_GROUPS - len(BUILTIN_GROUPS)
    if len(learned.policy.groups) > room:
        raise ConfigError(f"the policy has {len(learned.policy.groups)} groups, more than the {room} a policy "
                          "holds; merge some (learn: --peers world, or a shorter --prefix4/--prefix6)")
    text = format_policy(learned.policy, header)
    parse_policy(text, "the learned policy")
    return text
