"""Attach and detach the classifier on a device's clsact hooks, with pyroute2.

Our filters use one fixed priority and handle on both hooks, so detach removes
exactly ours and never a clsact qdisc or anybody else's filter.
"""
from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import DeviceError, KernelError

FILTER_PRIORITY = 0xC57  # shows as "pref 3159" in `tc filter show`
FILTER_HANDLE = 0xC57
HOOK_PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}
ETH_P_ALL = 0x0003


class TcAttacher:
    """Installs our bpf filters with netlink; one instance per network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def attach(self, ifindex: int, ingress_fd: int, egress_fd: int) -> None:
        """Install (or replace) our filters on both hooks; attaching twice is fine."""
        self._ensure_clsact(ifindex)
        for hook, fd in (("ingress", ingress_fd), ("egress", egress_fd)):
            self._netlink(
                "replace-filter", ifindex, hook, fd=fd, name=f"connstats_{hook}",
                classid=1, direct_action=True,
            )

    def detach(self, ifindex: int) -> None:
        """Remove our two filters; a device or filter that is already gone is fine."""
        for hook in HOOK_PARENTS:
            try:
                self._netlink("del-filter", ifindex, hook)
            except (DeviceError, KernelError):
                continue

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


def _is_ours(msg) -> bool:
    prio = (msg["info"] >> 16) & 0xFFFF
    return prio == FILTER_PRIORITY and msg.get_attr("TCA_KIND") == "bpf" and msg["handle"] == FILTER_HANDLE


def _translate(exc: NetlinkError, ifindex: int, what: str) -> Exception:
    if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL) and "filter" not in what:
        return DeviceError(f"device {ifindex} is gone or cannot take a clsact qdisc ({exc.args[-1]})")
    if exc.code == errno.ENODEV:
        return DeviceError(f"device {ifindex} is gone")
    if exc.code == errno.EPERM:
        return KernelError(f"{what} on device {ifindex} was refused; run as root (CAP_NET_ADMIN)")
    return KernelError(f"{what} on device {ifindex} failed: {exc.args[-1]}")
