"""Which network namespace on this host an address lives in, without entering any.

    RTM_GETADDR dump (own namespace)                            ─┐
    RTM_GETADDR dump + IFA_TARGET_NETNSID = a veth peer's nsid  ─┴─> address -> netns inode

The target attribute is only honoured on a socket with ``NETLINK_GET_STRICT_CHK``: without
it the kernel silently dumps the caller's own namespace. Loopback and link-local addresses
exist in every namespace and name none; an address found in two namespaces names neither.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Iterable, Mapping

RTM_GETADDR, RTM_NEWADDR = 22, 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
IFA_ADDRESS, IFA_TARGET_NETNSID = 1, 10
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
ADDRESS_BYTES = 16  # an IPv4 address takes the first 4, as in the flow keys


def _request(seq: int, nsid: int | None) -> bytes:
    body = struct.pack("=BBBBI", 0, 0, 0, 0, 0)  # ifaddrmsg: any family, any link
    if nsid is not None:
        body += struct.pack("=HHi", 8, IFA_TARGET_NETNSID, nsid)
    return struct.pack("=IHHII", 16 + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _parse(data: bytes, seq: int) -> tuple[list[bytes], bool]:
    """The IFA_ADDRESS values of one read of the dump, and whether it ended."""
    found: list[bytes] = []
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if msg_seq == seq:
            if kind == NLMSG_DONE:
                return found, True
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, off + 16)[0]
                if code:
                    raise OSError(code, f"RTM_GETADDR: {os.strerror(code)}")
                return found, True
            if kind == RTM_NEWADDR:
                attr = off + 24
                while attr + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, attr)
                    if alen < 4:
                        break
                    if atype == IFA_ADDRESS:
                        found.append(data[attr + 4:attr + alen])
                    attr += (alen + 3) & ~3
        off += (length + 3) & ~3
    return found, False


def dump_addresses(nsid: int | None = None) -> list[bytes]:
    """The addresses (4 or 16 bytes) of our namespace, or of the one we know as ``nsid``."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(_request(1, nsid))
        out: list[bytes] = []
        done = False
        while not done:
            found, done = _parse(sock.recv(1 << 16), 1)
            out.extend(found)
        return out
    finally:
        sock.close()


def names_a_namespace(raw: bytes) -> bool:
    """False for loopback, link-local and unspecified addresses: every namespace has them."""
    address = ipaddress.ip_address(raw)
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)


def padded(raw: bytes) -> bytes:
    return raw.ljust(ADDRESS_BYTES, b"\0")


def address_map(by_netns: Mapping[int, Iterable[bytes]]) -> dict[bytes, int]:
    """Padded address -> netns inode, from each namespace's addresses; addresses that name no
    namespace, or are found in two, are left out."""
    seen: dict[bytes, int] = {}
    twice: set[bytes] = set()
    for inode, addresses in by_netns.items():
        for raw in addresses:
            if not names_a_namespace(raw):
                continue
            key = padded(raw)
            if key in seen and seen[key] != inode:
                twice.add(key)
            seen[key] = inode
    return {key: inode for key, inode in seen.items() if key not in twice}
