"""From a policy's groups to what the kernel needs: governed devices and address prefixes.

    attached devices ─ ContainerIndex (peer netns -> Docker container) ─┐
    addresses in each peer netns (ip -j addr, cached per netns inode) ──┼─> Endpoint
    this host's addresses (the built-in group host) ─────────────────────┘
        └─ resolve(policy, endpoints, host) ─> Resolved: {ifindex: group mask},
                                                         {prefix: group mask}

A device is governed when a group selects it (containers, images, ifaces, netns globs, or
its pod: pods and k8s_namespaces globs and labels, all of those the group has matching).
A device whose owner has no pod (Docker, netns-only, a host device) matches no pod selector.
A group's addresses are its prefixes plus the addresses behind the devices it selects,
so a rule from ``web`` to ``db`` matches on db's veth by web's address and vice versa.
Bit 0 is ``host``, bit 1 ``world``; ``world`` is every address no group's prefix holds.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from typing import TYPE_CHECKING, Iterable, Protocol

from ..contract.policy_file import BUILTIN_GROUPS, Group, Policy

if TYPE_CHECKING:
    from ..kernel.devices import AttachedDevice

HOST_BIT = 1 << BUILTIN_GROUPS.index("host")
WORLD_BIT = 1 << BUILTIN_GROUPS.index("world")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """An attached device and who is behind it."""

    ifindex: int
    ifname: str
    container: str = ""  # Docker container name
    image: str = ""
    netns: str = ""  # the namespace's name (netns-only containers)
    addresses: tuple[Address, ...] = ()
    pod: str = ""  # "<k8s namespace>/<pod name>" when a runtime knows the pod
    pod_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Resolved:
    """A policy made concrete: what the kernel tables hold (see tables.py)."""

    policy: Policy
    devices: dict[int, int] = field(default_factory=dict)  # governed ifindex -> its groups
    prefixes: dict[Network, int] = field(default_factory=dict)  # prefix -> groups (containing ones ORed in)

    def bit(self, name: str) -> int:
        return 1 << self.policy.group_names.index(name)

    def names(self, mask: int) -> list[str]:
        return [name for i, name in enumerate(self.policy.group_names) if mask >> i & 1]

    def groups_of(self, address: str) -> int:
        """The groups of an address, as the kernel's longest-prefix match finds them."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return 0
        found = self._index.longest(ip)
        return found if found is not None else WORLD_BIT

    @cached_property
    def _index(self) -> PrefixIndex:
        return PrefixIndex(self.prefixes)


def resolve(policy: Policy, endpoints: Iterable[Endpoint], host_addresses: Iterable[Address]) -> Resolved:
    devices: dict[int, int] = {}
    own: dict[Network, int] = {}
    for bit, group in enumerate(policy.groups, start=len(BUILTIN_GROUPS)):
        for network in group.cidrs:
            own[network] = own.get(network, 0) | 1 << bit
    for endpoint in endpoints:
        mask = sum(1 << bit for bit, group in enumerate(policy.groups, start=len(BUILTIN_GROUPS))
                   if selects(group, endpoint))
        if not mask:
            continue
        devices[endpoint.ifindex] = mask
        for address in endpoint.addresses:
            network = ipaddress.ip_network(address)
            own[network] = own.get(network, 0) | mask
    for address in host_addresses:
        network = ipaddress.ip_network(address)
        own[network] = own.get(network, 0) | HOST_BIT
    return Resolved(policy, devices, _nested(own))


def selects(group: Group, endpoint: Endpoint) -> bool:
    """Does ``group`` select the device ``endpoint`` (or the container behind it)?"""
    def any_match(value: str, globs: tuple[str, ...]) -> bool:
        return bool(value) and any(fnmatchcase(value, glob) for glob in globs)

    return (any_match(endpoint.container.lstrip("/"), group.containers)
            or any_match(endpoint.image, group.images)
            or any_match(endpoint.ifname, group.ifaces)
            or any_match(endpoint.netns, group.netns)
            or selects_pod(group, endpoint.pod, endpoint.pod_labels))


def selects_pod(group: Group, pod: str, labels: tuple[tuple[str, str], ...]) -> bool:
    """Is ``pod`` ("<namespace>/<name>", "" for none) in the group by its pod selectors? Each
    one the group has must match: a pods glob, a k8s_namespaces glob, every label pair."""
    if not pod or not group.selects_pods:
        return False
    namespace = pod.split("/", 1)[0]
    return ((not group.pods or any(fnmatchcase(pod, glob) for glob in group.pods))
            and (not group.k8s_namespaces or any(fnmatchcase(namespace, glob) for glob in group.k8s_namespaces))
            and set(group.labels) <= set(labels))


def _nested(own: dict[Network, int]) -> dict[Network, int]:
    """Each prefix's groups with those of every prefix holding it: the kernel's
    longest-prefix match returns one entry, which must say everything. One dictionary
    look-up per prefix length that occurs (at most 33 or 129), not one test per pair."""
    index = PrefixIndex(own)
    return {net: mask | index.held_by(net) for net, mask in own.items()}


class PrefixIndex:
    """Prefixes by (family, length) -> {network as int: groups}, longest length first:
    what holds an address or a prefix is a few dictionary look-ups, whatever the count."""

    def __init__(self, prefixes: dict[Network, int]) -> None:
        self._by_length: dict[int, list[tuple[int, int, dict[int, int]]]] = {4: [], 6: []}
        tables: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
        for net, groups in prefixes.items():
            tables[net.version, net.prefixlen][int(net.network_address)] = groups
        for (version, length), table in sorted(tables.items(), key=lambda item: -item[0][1]):
            self._by_length[version].append((length, (32 if version == 4 else 128) - length, table))

    def longest(self, ip: Address) -> int | None:
        """The groups of the longest prefix holding ``ip``; None if none does."""
        value = int(ip)
        for _, shift, table in self._by_length[ip.version]:
            found = table.get(value >> shift << shift)
            if found is not None:
                return found
        return None

    def held_by(self, net: Network) -> int:
        """The OR of the groups of every prefix strictly holding ``net``."""
        mask, value = 0, int(net.network_address)
        for length, shift, table in self._by_length[net.version]:
            if length < net.prefixlen:
                mask |= table.get(value >> shift << shift, 0)
        return mask


# -- addresses ----------------------------------------------------------------------------


def addresses_in(netns_path: str | None) -> tuple[Address, ...]:
    """Every address on the non-loopback devices of a network namespace (None: ours, with
    loopback: the host's own). Reads ``ip -j addr`` (through nsenter for another netns)."""
    command = ["ip", "-j", "addr", "show"]
    if netns_path is not None:
        command = ["nsenter", f"--net={netns_path}", *command]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout
        links = json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()  # the namespace went away: no addresses, its devices leave soon
    found = []
    for link in links:
        if netns_path is not None and link.get("ifname") == "lo":
            continue
        for info in link.get("addr_info", ()):
            try:
                found.append(ipaddress.ip_address(info["local"]))
            except (KeyError, ValueError):
                continue
    return tuple(found)


class _Netns(Protocol):
    """What an endpoint reads of a network namespace (watch/containers.py's ``Netns``)."""

    @property
    def inode(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def name(self) -> str: ...


class _Container(Protocol):
    """What an endpoint reads of a container (watch/containers.py's ``Container``)."""

    @property
    def name(self) -> str: ...
    @property
    def image(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def pod_labels(self) -> tuple[tuple[str, str], ...]: ...


class Owners(Protocol):
    """Who is behind a device's peer: the probe's ``ContainerIndex`` (watch/containers.py,
    which this module may not import: it imports the policy tables through seams.py)."""

    def owner(self, peer_nsid: int | None) -> tuple[_Netns | None, _Container | None]: ...


def endpoints_of(devices: Iterable[AttachedDevice], containers: Owners | None = None,
                 cache: dict[int, tuple[Address, ...]] | None = None) -> list[Endpoint]:
    """Attached devices (``AttachedDevice``) as endpoints: who is behind each (through the
    probe's ``ContainerIndex``) and that namespace's addresses (``cache``: netns inode ->
    addresses, filled as namespaces are first seen)."""
    cache = {} if cache is None else cache
    endpoints = []
    for device in devices:
        netns = container = None
        if containers is not None and device.link.peer_nsid is not None:
            netns, container = containers.owner(device.link.peer_nsid)
        addresses: tuple[Address, ...] = ()
        if netns is not None:
            if netns.inode not in cache:
                path = f"/var/run/netns/{netns.name}" if netns.name else f"/proc/{netns.pid}/ns/net"
                cache[netns.inode] = addresses_in(path)
            addresses = cache[netns.inode]
        endpoints.append(Endpoint(
            device.ifindex, device.name, container=container.name if container else "",
            image=container.image if container else "", netns=netns.name if netns else "",
            addresses=addresses, pod=container.pod if container else "",
            pod_labels=container.pod_labels if container else ()))
    return endpoints
