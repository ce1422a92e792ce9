"""Which devices the probe is attached to, and how each one's packets are read.

A device's settings live in the classifier's per-ifindex config map: whether its
direction is inverted (veths, so records read from the container's side) and
whether its packets start with an Ethernet header.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from pyroute2 import IPRoute

from .errors import ConfigError, DeviceError
from .kernel import ClassifierProgram
from .tc import TcAttacher

DIRECTION_MODES = ("auto", "normal", "inverted")
DEVICE_SLOTS = 65536  # mirrors DEVICE_SLOTS in flows.bpf.c
ETHERNET_LINK_TYPES = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What netlink says about a device."""

    ifindex: int
    name: str
    kind: str  # "veth", "bridge", ... or "" for physical devices
    has_l2_header: bool


@dataclass(frozen=True, slots=True)
class AttachedDevice:
    link: LinkInfo
    mode: str  # as asked: auto | normal | inverted
    inverted: bool  # as applied
    since_ns: int

    @property
    def ifindex(self) -> int:
        return self.link.ifindex

    @property
    def name(self) -> str:
        return self.link.name


def resolve_inverted(mode: str, kind: str) -> bool:
    """``auto`` inverts veths: host-side ingress is the container's egress."""
    if mode not in DIRECTION_MODES:
        raise ConfigError(f"direction mode {mode!r} is not one of {', '.join(DIRECTION_MODES)}")
    if mode == "auto":
        return kind == "veth"
    return mode == "inverted"


def read_link(ipr: IPRoute, name_or_index: str | int) -> LinkInfo:
    """Look a device up by name or ifindex; raise ``DeviceError`` when there is none."""
    try:
        if isinstance(name_or_index, int):
            links = ipr.get_links(name_or_index)
        else:
            indexes = ipr.link_lookup(ifname=name_or_index)
            links = ipr.get_links(*indexes) if indexes else []
    except Exception as exc:  # pyroute2 raises NetlinkError for a missing index
        raise DeviceError(f"no network interface {name_or_index!r}; see `ip link`") from exc
    if not links:
        raise DeviceError(f"no network interface {name_or_index!r}; see `ip link`")
    return link_info(links[0])


def link_info(msg) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    return LinkInfo(
        ifindex=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind or "",
        has_l2_header=msg["ifi_type"] in ETHERNET_LINK_TYPES,
    )


class DeviceConfigMap:
    """Writes ``struct device_config`` entries: array slots, or the hash for high ifindexes."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._slots = program.bpf[b"devices"]
        self._high = program.bpf[b"devices_high"]

    def set(self, ifindex: int, inverted: bool, has_l2_header: bool) -> None:
        table = self._table(ifindex)
        value = table.Leaf()
        value.inverted = int(inverted)
        value.no_l2 = int(not has_l2_header)
        table[table.Key(ifindex)] = value

    def clear(self, ifindex: int) -> None:
        table = self._table(ifindex)
        if ifindex < DEVICE_SLOTS:
            table[table.Key(ifindex)] = table.Leaf()
        else:
            try:
                del table[table.Key(ifindex)]
            except KeyError:
                pass

    def _table(self, ifindex: int):
        return self._slots if ifindex < DEVICE_SLOTS else self._high


class DeviceRegistry:
    """Attaches the classifier to devices and remembers which, since when, and how."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._program = program
        self._config = DeviceConfigMap(program)
        self._tc = TcAttacher()
        self._ipr = IPRoute()
        self._attached: dict[int, AttachedDevice] = {}
        # Names outlive detach so a final drain can still label the device's records.
        self._names: dict[int, str] = {}

    def attach(self, name_or_index: str | int, mode: str = "auto") -> AttachedDevice:
        link = read_link(self._ipr, name_or_index)
        inverted = resolve_inverted(mode, link.kind)
        self._config.set(link.ifindex, inverted, link.has_l2_header)
        self._tc.attach(link.ifindex, self._program.ingress_fd, self._program.egress_fd)
        previous = self._attached.get(link.ifindex)
        since = previous.since_ns if previous and previous.link == link else time.time_ns()
        device = AttachedDevice(link, mode, inverted, since)
        self._attached[link.ifindex] = device
        self._names[link.ifindex] = link.name
        return device

    def detach(self, name_or_index: str | int) -> AttachedDevice:
        device = self.find(name_or_index)
        self._tc.detach(device.ifindex)
        self._config.clear(device.ifindex)
        del self._attached[device.ifindex]
        return device

    def detach_all(self) -> None:
        for ifindex in list(self._attached):
            self.detach(ifindex)

    def find(self, name_or_index: str | int) -> AttachedDevice:
        for device in self._attached.values():
            if name_or_index in (device.name, device.ifindex):
                return device
        raise DeviceError(f"{name_or_index!r} is not attached; see `connstats list`")

    def devices(self) -> list[AttachedDevice]:
        return sorted(self._attached.values(), key=lambda d: d.ifindex)

    def names(self) -> dict[int, str]:
        return self._names

    def forget_name(self, ifindex: int) -> None:
        if ifindex not in self._attached:
            self._names.pop(ifindex, None)

    def attach_many(self, names: Iterable[str], mode: str = "auto") -> list[AttachedDevice]:
        return [self.attach(name, mode) for name in names]

    def close(self) -> None:
        self._tc.close()
        self._ipr.close()
