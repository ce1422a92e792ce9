"""Attach and detach the classifier on a device's clsact hooks, with pyroute2.

Our filters use one fixed priority and handle on both hooks. A filter is ours when it
sits there *and* runs one of our programs (its BPF program id, ``TCA_BPF_ID`` in the
filter dump): detach removes exactly those, and never a clsact qdisc or a filter
somebody else put in our place.
"""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..contract.errors import DeviceError, KernelError

FILTER_PRIORITY = 0xC57  # shows as "pref 3159" in `tc filter show`
FILTER_HANDLE = 0xC57
HOOK_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
HOOKS = tuple(HOOK_PARENTS)
ETH_P_ALL = 0x0003
# rtnetlink attribute numbers pyroute2 0.9 does not decode (linux/rtnetlink.h, pkt_cls.h)
TCA_OPTIONS = 2
TCA_BPF_NAME = 7
TCA_BPF_ID = 11
_NLMSG_HEADER, _TCMSG_HEADER = 16, 20


@dataclass(frozen=True, slots=True)
class TcFilter:
    """The filter at our priority on one hook, whoever put it there."""

    kind: str  # "bpf", "u32", ...
    handle: int
    prog_id: int  # the eBPF program it runs; 0 when none (classic BPF, another kind)
    prog_name: str

    def describe(self) -> str:
        if self.prog_id:
            return f"bpf program {self.prog_id} ({self.prog_name or 'no name'})"
        return f"a {self.kind} filter (handle {self.handle:#x})"

    def to_wire(self) -> dict:
        return {"kind": self.kind, "handle": self.handle, "prog_id": self.prog_id,
                "prog_name": self.prog_name}


def program_id(prog_fd: int) -> int:
    """The kernel's id of the BPF program behind ``prog_fd`` (from its fdinfo)."""
    with open(f"/proc/self/fdinfo/{prog_fd}") as info:
        for line in info:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise KernelError(f"fd {prog_fd} is not a BPF program; cannot tell our filters from others'")


class TcAttacher:
    """Installs our bpf filters with netlink; one instance per network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> "TcAttacher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def attach(self, ifindex: int, ingress_fd: int, egress_fd: int) -> None:
        """Install (or replace) our filters on both hooks; attaching twice is fine."""
        self._ensure_clsact(ifindex)
        for hook, fd in (("ingress", ingress_fd), ("egress", egress_fd)):
            self._netlink(
                "replace-filter", ifindex, hook, fd=fd, name=f"connstats_{hook}",
                classid=1, direct_action=True,
            )

    def detach(self, ifindex: int, hooks: Iterable[str] = HOOKS) -> None:
        """Remove the filters at our place on ``hooks``; one already gone is fine."""
        for hook in hooks:
            try:
                self._netlink("del-filter", ifindex, hook)
            except (DeviceError, KernelError):
                continue

    def filters(self, ifindex: int) -> dict[str, TcFilter]:
        """Per hook, the filter at our priority now (hooks without one are left out).

        A device that does not exist has no filters: ``{}``.
        """
        found = {}
        for hook, parent in HOOK_PARENTS.items():
            try:
                dump = self._ipr.get_filters(index=ifindex, parent=parent)
            except NetlinkError:
                continue
            mine = [_tc_filter(f) for f in dump if _priority(f) == FILTER_PRIORITY and f["handle"]]
            mine.sort(key=lambda f: f.handle != FILTER_HANDLE)  # ours first, if there
            if mine:
                found[hook] = mine[0]
        return found

    def filter_program_ids(self, ifindex: int) -> dict[str, int]:
        """Per hook, the id of the BPF program at our priority and handle (0: not eBPF)."""
        return {hook: f.prog_id for hook, f in self.filters(ifindex).items()
                if f.handle == FILTER_HANDLE}

    def our_filters(self, ifindex: int) -> list[str]:
        """The hooks on which our filter is installed (for checks and `list`)."""
        hooks = []
        for hook, parent in HOOK_PARENTS.items():
            try:
                found = self._ipr.get_filters(index=ifindex, parent=parent)
            except NetlinkError:
                continue
            if any(_is_ours(f) for f in found):
                hooks.append(hook)
        return hooks

    def _ensure_clsact(self, ifindex: int) -> None:
        try:
            self._ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _translate(exc, ifindex, "adding the clsact qdisc") from exc

    def _netlink(self, command: str, ifindex: int, hook: str, **attrs) -> None:
        try:
            self._ipr.tc(
                command, "bpf", ifindex, FILTER_HANDLE, parent=HOOK_PARENTS[hook],
                prio=FILTER_PRIORITY, protocol=ETH_P_ALL, **attrs,
            )
        except NetlinkError as exc:
            raise _translate(exc, ifindex, f"{command} on {hook}") from exc


def _priority(msg) -> int:
    return (msg["info"] >> 16) & 0xFFFF


def _is_ours(msg) -> bool:
    return _priority(msg) == FILTER_PRIORITY and msg.get_attr("TCA_KIND") == "bpf" and msg["handle"] == FILTER_HANDLE


def _tc_filter(msg) -> TcFilter:
    options = _attributes(_raw(msg)[_NLMSG_HEADER + _TCMSG_HEADER:]).get(TCA_OPTIONS, b"")
    bpf = _attributes(options) if msg.get_attr("TCA_KIND") == "bpf" else {}
    prog_id = struct.unpack_from("=I", bpf[TCA_BPF_ID])[0] if len(bpf.get(TCA_BPF_ID, b"")) >= 4 else 0
    name = bpf.get(TCA_BPF_NAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    return TcFilter(msg.get_attr("TCA_KIND") or "", msg["handle"], prog_id, name)


def _raw(msg) -> bytes:
    """The message's own bytes (pyroute2 keeps the buffer it parsed; it drops TCA_BPF_ID)."""
    return bytes(msg.data[msg.offset:msg.offset + msg["header"]["length"]])


def _attributes(data: bytes) -> dict[int, bytes]:
    """Netlink attributes (type without flags -> payload), one level."""
    out, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _translate(exc: NetlinkError, ifindex: int, what: str) -> Exception:
    if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL) and "filter" not in what:
        return DeviceError(f"device {ifindex} is gone or cannot take a clsact qdisc ({exc.args[-1]})")
    if exc.code == errno.ENODEV:
        return DeviceError(f"device {ifindex} is gone")
    if exc.code == errno.EPERM:
        return KernelError(f"{what} on device {ifindex} was refused; run as root (CAP_NET_ADMIN)")
    return KernelError(f"{what} on device {ifindex} failed: {exc.args[-1]}")
