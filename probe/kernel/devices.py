"""Which devices the probe is attached to, and how each one's packets are read.

A device's settings live in the classifier's per-ifindex config map: whether its
direction is inverted (veths, so records read from the container's side) and
whether its packets start with an Ethernet header.

A device has one owner: the registry holds its lock (ownership.py) while attached, so
a second probe on the host is refused with the first one's pid. Once per interval
``check_filters`` makes sure our filters are still ours (same BPF program ids); a device
whose filter somebody else replaced or removed is released without touching theirs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from pyroute2 import IPRoute

from ..contract.errors import ConfigError, DeviceError
from .loader import ClassifierProgram, read_map
from .ownership import DeviceLocks
from .tc import HOOKS, TcAttacher, TcFilter, program_id

DIRECTION_MODES = ("auto", "normal", "inverted")
DEVICE_SLOTS = 65536  # mirrors DEVICE_SLOTS in flows_structs.h
ETHERNET_LINK_TYPES = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK
DEVICE_CONFIG = np.dtype([("inverted", "u1"), ("no_l2", "u1"), ("attached", "u1"), ("mode", "u1")])
IFINDEX = np.dtype("<u4")  # the key of the device config maps
IFNAMSIZ = 16  # with the terminating NUL
IFF_UP = 0x1
ARPHRD_LOOPBACK = 772


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What netlink says about a device."""

    ifindex: int
    name: str
    kind: str  # "veth", "bridge", ... or "" for physical devices
    has_l2_header: bool
    up: bool = False  # IFF_UP when it was read
    peer_nsid: int | None = None  # IFLA_LINK_NETNSID: a veth whose peer is in another namespace
    loopback: bool = False
    peer_ifindex: int | None = None  # IFLA_LINK of a veth: its peer's ifindex (in the peer's namespace)


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

    def to_wire(self) -> dict[str, Any]:
        """The one JSON shape of a device (control replies; the HTTP API and the events
        derive theirs from it)."""
        return {
            "name": self.name, "ifindex": self.ifindex, "kind": self.link.kind,
            "mode": self.mode, "direction": "inverted" if self.inverted else "normal",
            "since": self.since_ns,
        }


def resolve_inverted(mode: str, kind: str) -> bool:
    """``auto`` inverts veths: host-side ingress is the container's egress."""
    if mode not in DIRECTION_MODES:
        raise ConfigError(f"direction mode {mode!r} is not one of {', '.join(DIRECTION_MODES)}")
    if mode == "auto":
        return kind == "veth"
    return mode == "inverted"


@dataclass(frozen=True, slots=True)
class FilterLoss:
    """A device released because its filter is not ours any more, and what is there now."""

    device: AttachedDevice
    found: dict[str, TcFilter | None]  # per hook that lost ours: the filter at our place, or None

    @property
    def event(self) -> str:
        """``replaced`` if another filter sits in our place on some hook, else ``lost``."""
        return "replaced" if any(self.found.values()) else "lost"

    def describe(self) -> str:
        """e.g. "our ingress filter was replaced by bpf program 812 (x), our egress filter was removed"."""
        return ", ".join(f"our {hook} filter was {'replaced by ' + f.describe() if f else 'removed'}"
                         for hook, f in self.found.items())

    def to_wire(self) -> dict[str, Any]:
        return {hook: f.to_wire() if f else None for hook, f in self.found.items()}


def check_name(name: str) -> str:
    """Refuse what cannot be a Linux interface name (the kernel's ``dev_valid_name``)."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if not name or name in (".", ".."):
        raise DeviceError(f"{name!r} is not an interface name; see `ip link`")
    if size >= IFNAMSIZ:
        raise DeviceError(f"interface name {name!r} is {size} bytes long, but Linux allows at most "
                          f"{IFNAMSIZ - 1}; see `ip link`")
    bad = next((c for c in name if ord(c) < 32 or 127 <= ord(c) < 160 or c in "/:" or c.isspace()),
               None)
    if bad is not None:
        raise DeviceError(f"interface name {name!r} contains {bad!r}, which no interface name "
                          "can; see `ip link`")
    return name


def read_link(ipr: IPRoute, name_or_index: str | int) -> LinkInfo:
    """Look a device up by name or ifindex; raise ``DeviceError`` when there is none."""
    if isinstance(name_or_index, str):
        check_name(name_or_index)
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
    """The one reading of an RTM_NEWLINK message (attach, the link watcher, Docker's veths)."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
    return LinkInfo(
        ifindex=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=kind or "",
        has_l2_header=msg["ifi_type"] in ETHERNET_LINK_TYPES,
        up=bool(msg["flags"] & IFF_UP),
        peer_nsid=msg.get_attr("IFLA_LINK_NETNSID"),
        loopback=msg["ifi_type"] == ARPHRD_LOOPBACK,
        peer_ifindex=msg.get_attr("IFLA_LINK") if kind == "veth" else None,
    )


def list_links() -> list[LinkInfo]:
    """Every device of this namespace, in ifindex order."""
    with IPRoute() as ipr:
        return sorted((link_info(msg) for msg in ipr.get_links()), key=lambda link: link.ifindex)


def default_interfaces() -> list[str]:
    """Every non-loopback interface that is up, in ifindex order (``--iface`` left out)."""
    return [link.name for link in list_links() if link.up and not link.loopback]


def check_interfaces(names: list[str]) -> None:
    """Raise ``DeviceError`` for the first name that is no interface (before BPF is loaded)."""
    with IPRoute() as ipr:
        for name in names:
            if not ipr.link_lookup(ifname=check_name(name)):
                raise DeviceError(f"no network interface {name!r}; see `ip link`")


class DeviceConfigMap:
    """Writes ``struct device_config`` entries: array slots, or the hash for high ifindexes.

    An entry also says that the device is attached, and in which direction mode: the map
    is pinned, so a probe that starts can adopt the devices of the probe before it.
    """

    def __init__(self, program: ClassifierProgram) -> None:
        self._slots = program.bpf[b"devices"]
        self._high = program.bpf[b"devices_high"]

    def set(self, ifindex: int, inverted: bool, has_l2_header: bool, mode: str = "auto") -> None:
        table = self._table(ifindex)
        value = table.Leaf()
        value.inverted = int(inverted)
        value.no_l2 = int(not has_l2_header)
        value.attached = 1
        value.mode = DIRECTION_MODES.index(mode)
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

    def attached(self) -> dict[int, str]:
        """ifindex -> direction mode of every device marked attached."""
        found = {}
        for table in (self._slots, self._high):
            found.update(attached_entries(read_map(table.map_fd, table.max_entries, IFINDEX, DEVICE_CONFIG)))
        return found

    def _table(self, ifindex: int):
        return self._slots if ifindex < DEVICE_SLOTS else self._high


def attached_entries(entries: tuple[np.ndarray, np.ndarray]) -> dict[int, str]:
    """ifindex -> direction mode of the (keys, values) of a device config map marked attached."""
    keys, values = entries
    marked = values["attached"] == 1
    return {ifindex: DIRECTION_MODES[mode] if mode < len(DIRECTION_MODES) else "auto"
            for ifindex, mode in zip(keys[marked].tolist(), values["mode"][marked].tolist(), strict=True)}


class DeviceRegistry:
    """Attaches the classifier to devices and remembers which, since when, and how."""

    def __init__(self, program: ClassifierProgram, locks: DeviceLocks | None = None) -> None:
        self._program = program
        self._config = DeviceConfigMap(program)
        self._locks = locks if locks is not None else DeviceLocks()
        self._program_ids = {"ingress": program_id(program.ingress_fd),
                             "egress": program_id(program.egress_fd)}
        self._tc = TcAttacher()
        self._checker = TcAttacher()  # its own socket: filter dumps while others attach
        self._ipr = IPRoute()
        self._attached: dict[int, AttachedDevice] = {}
        # Names outlive detach so a final drain can still label the device's records.
        self._names: dict[int, str] = {}

    def attach(self, name_or_index: str | int, mode: str = "auto") -> AttachedDevice:
        """Attach (or re-attach with another mode); ``DeviceOwned`` if another probe owns it."""
        link = read_link(self._ipr, name_or_index)
        inverted = resolve_inverted(mode, link.kind)
        fresh = link.ifindex not in self._attached
        if fresh:
            self._locks.acquire(link.ifindex, link.name)
        try:
            self._config.set(link.ifindex, inverted, link.has_l2_header, mode)
            self._tc.attach(link.ifindex, self._program.ingress_fd, self._program.egress_fd)
        except BaseException:
            if fresh:
                self._config.clear(link.ifindex)
                self._locks.release(link.ifindex)
            raise
        previous = self._attached.get(link.ifindex)
        since = previous.since_ns if previous and previous.link == link else time.time_ns()
        device = AttachedDevice(link, mode, inverted, since)
        self._attached[link.ifindex] = device
        self._names[link.ifindex] = link.name
        return device

    def detach(self, name_or_index: str | int) -> AttachedDevice:
        """Remove our filters (only those still running our programs) and give the device up."""
        device = self.find(name_or_index)
        self._tc.detach(device.ifindex, self._ours(self._tc.filters(device.ifindex)))
        self._release(device)
        return device

    def suspects(self, devices: Iterable[AttachedDevice]) -> set[int]:
        """The ifindexes among ``devices`` whose filters do not all run our programs now.

        One filter dump per device and hook, on a socket of its own: safe to call while
        another thread attaches or detaches (``check_filters`` then looks again).
        """
        return {d.ifindex for d in devices
                if len(self._ours(self._checker.filters(d.ifindex))) < len(HOOKS)}

    def check_filters(self, suspects: Iterable[int] | None = None) -> list[FilterLoss]:
        """Release every device (of ``suspects``, if given) whose filter somebody else
        replaced or removed.

        One filter dump per device and hook. A device that no longer exists is left to
        the link watcher (it is ``gone``, not lost). Filters that are not ours stay.
        """
        lost = []
        only = None if suspects is None else set(suspects)
        for device in self.devices():
            if only is not None and device.ifindex not in only:
                continue
            found = self._tc.filters(device.ifindex)
            ours = self._ours(found)
            if len(ours) == len(HOOKS) or not self._exists(device):
                continue
            self._tc.detach(device.ifindex, ours)
            self._release(device)
            lost.append(FilterLoss(device, {h: found.get(h) for h in HOOKS if h not in ours}))
        return lost

    def owner_of(self, ifindex: int) -> int | None:
        """The pid of the live probe that owns ``ifindex`` (this one's too), or None."""
        return self._locks.owner_of(ifindex)

    def program_ids(self) -> dict[str, int]:
        """Per hook, the id of the BPF program our filters run."""
        return dict(self._program_ids)

    def _ours(self, found: dict[str, TcFilter]) -> list[str]:
        return [hook for hook in HOOKS if hook in found and found[hook].prog_id == self._program_ids[hook]]

    def _exists(self, device: AttachedDevice) -> bool:
        try:
            return read_link(self._ipr, device.ifindex).name == device.name
        except DeviceError:
            return False

    def _release(self, device: AttachedDevice) -> None:
        self._config.clear(device.ifindex)
        del self._attached[device.ifindex]
        self._locks.release(device.ifindex)

    def previously_attached(self, marked: dict[int, str] | None = None) -> dict[int, str]:
        """ifindex -> direction mode of the devices that a probe before this one left
        attached (the config map is pinned; or ``marked``, read from an older layout's)
        and that still carry a connstats filter. Entries of devices without one (gone,
        ifindex reused) are cleared."""
        found = {}
        marked = self._config.attached() if marked is None else marked
        for ifindex, mode in marked.items():
            if ifindex in self._attached:
                continue
            if any(f.prog_name.startswith("connstats_") for f in self._tc.filters(ifindex).values()):
                found[ifindex] = mode
            else:
                self._config.clear(ifindex)
        return found

    def forget_config(self, ifindex: int) -> None:
        """Clear a device's config entry (a previous probe's device that cannot be adopted)."""
        if ifindex not in self._attached:
            self._config.clear(ifindex)

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
        self._locks.release_all()
        self._checker.close()
        self._tc.close()
        self._ipr.close()
