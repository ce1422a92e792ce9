"""The netlink side of the link watcher: what a device is (``DeviceKey``) and how it is
(``LinkState``), a non-blocking RTMGRP_LINK socket (``LinkMonitor``), a dump of every link
(``dump_links``) and whether one still exists (``still_there``). No decisions: those are
the ``LinkWatcher``'s (watcher.py).
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from ..kernel.devices import link_info

SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20  # a burst of a few thousand link messages fits


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """One device's identity: its namespace (inode), ifindex and name."""

    netns: int
    ifindex: int
    name: str


@dataclass(frozen=True, slots=True)
class LinkState:
    key: DeviceKey
    kind: str  # "veth", "bridge", ... "" for physical devices
    up: bool
    peer_nsid: int | None  # IFLA_LINK_NETNSID: the peer lives in another namespace

    @property
    def ifindex(self) -> int:
        return self.key.ifindex

    @property
    def name(self) -> str:
        return self.key.name


def link_state(msg: Any, netns: int) -> LinkState:
    """A link message in namespace ``netns``, read by ``devices.link_info``."""
    link = link_info(msg)
    return LinkState(DeviceKey(netns, link.ifindex, link.name), link.kind, link.up, link.peer_nsid)


class LinkMonitor:
    """A non-blocking rtnetlink socket in the RTMGRP_LINK group; read it when readable."""

    def __init__(self, receive_buffer: int = RECEIVE_BUFFER) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except OSError:  # without CAP_NET_ADMIN: whatever rmem_max allows
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)
        self._marshal = MarshalRtnl()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[list[Any], bool]:
        """Every message queued now, and whether the kernel dropped some (ENOBUFS)."""
        messages: list[Any] = []  # pyroute2's ifinfmsg (untyped)
        overflowed = False
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return messages, overflowed
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                overflowed = True
                continue
            messages.extend(m for m in self._marshal.parse(data)
                            if m["header"]["type"] in (RTM_NEWLINK, RTM_DELLINK))

    def close(self) -> None:
        self.sock.close()


def dump_links(netns: int) -> dict[int, LinkState]:
    with IPRoute() as ipr:
        return {msg["index"]: link_state(msg, netns) for msg in ipr.get_links()}


def still_there(key: DeviceKey) -> bool:
    """Whether the device ``key`` still exists (same ifindex, same name)."""
    try:
        with IPRoute() as ipr:
            links = ipr.get_links(key.ifindex)
    except Exception:
        return False
    return bool(links) and links[0].get_attr("IFLA_IFNAME") == key.name

