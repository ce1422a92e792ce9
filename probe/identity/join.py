"""The process on each end of every record, joined at drain time, column by column.

    socket-owner snapshot ─ key (netns << 24 | proto << 16 | port), sorted ─┐
    records: local end = the device's end (egress: its source port)         ├─ searchsorted
             local netns = the device's (a veth's peer namespace, or ours)  │  -> pid, process
             remote end: the remote address's namespace on this host ───────┘  -> peer_pid, peer_process

Pure numpy: no kernel, no /proc (the caller gives the names). A record whose end is not a
TCP or UDP socket of this host (another host, forwarded or NATed traffic, ICMP) gets
pid 0 and the empty name on that end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numpy.typing import NDArray

ADDRESS_BYTES = 16
NAMED_PROTOCOLS = (6, 17)
_TABLE_AT_MOST = 1 << 20
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: hi ^ lo * _MIX is one-to-one in lo for a given hi


def owner_keys(netns: NDArray, proto: NDArray, port: NDArray) -> NDArray[np.uint64]:
    """One u64 per (netns inode, protocol, port): 32 | 8 | 16 bits."""
    keys: NDArray[np.uint64] = np.left_shift(np.asarray(netns, dtype=np.uint64), np.uint64(24))
    keys |= np.left_shift(np.asarray(proto, dtype=np.uint64), np.uint64(16))
    keys |= np.asarray(port, dtype=np.uint64)
    return keys


@dataclass(frozen=True)
class OwnerTable:
    """The owners of local sockets, sorted by key, with each entry's pid and process name."""

    keys: NDArray[np.uint64]
    pids: NDArray[np.uint32]  # one more than keys: the last is "nobody" (0)
    names: NDArray[np.object_]  # one more than keys: the last is "nobody" ("")

    @classmethod
    def of(cls, netns: NDArray, proto: NDArray, port: NDArray, pids: NDArray,
           names: NDArray[np.object_]) -> OwnerTable:
        keys = owner_keys(netns, proto, port)
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], np.append(np.asarray(pids, dtype=np.uint32)[order], np.uint32(0)),
                   np.append(np.asarray(names, dtype=object)[order], np.array([""], dtype=object)))

    @classmethod
    def empty(cls) -> OwnerTable:
        return cls(np.zeros(0, np.uint64), np.zeros(1, np.uint32), np.array([""], dtype=object))

    def lookup(self, keys: NDArray[np.uint64], wanted: NDArray[np.bool_]) -> tuple[NDArray[np.object_], NDArray[np.uint32]]:
        """(name, pid) per key; "" and 0 where the key is not in the table or not ``wanted``."""
        if not len(self.keys):
            return np.full(len(keys), "", dtype=object), np.zeros(len(keys), np.uint32)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = wanted & (self.keys[at] == keys)
        at = np.where(hit, at, len(self.keys))  # one past the end: the "nobody" entry
        return self.names[at], self.pids[at]


def address_halves(raw: NDArray[np.void]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """A column of 16-byte addresses as two u64 columns (first and last 8 bytes)."""
    words = np.ascontiguousarray(raw).view(np.uint64).reshape(-1, 2)
    return words[:, 0], words[:, 1]


@dataclass(frozen=True)
class AddressTable:
    """Padded 16-byte address -> netns inode, sorted by a one-to-one mix of its halves."""

    mixed: NDArray[np.uint64]
    hi: NDArray[np.uint64]
    lo: NDArray[np.uint64]
    netns: NDArray[np.uint64]

    @classmethod
    def of(cls, addresses: Mapping[bytes, int]) -> AddressTable:
        raw = np.frombuffer(b"".join(a.ljust(ADDRESS_BYTES, b"\0") for a in addresses), dtype=f"V{ADDRESS_BYTES}")
        hi, lo = address_halves(raw) if len(raw) else (np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        mixed = hi ^ (lo * _MIX)
        order = np.argsort(mixed, kind="stable")
        netns = np.fromiter(addresses.values(), dtype=np.uint64, count=len(addresses))
        return cls(mixed[order], hi[order], lo[order], netns[order])

    def lookup(self, raw: NDArray[np.void]) -> NDArray[np.uint64]:
        """The netns inode of each address; 0 where it is not on this host (or names none)."""
        if not len(self.mixed) or not len(raw):
            return np.zeros(len(raw), np.uint64)
        hi, lo = address_halves(raw)
        at = np.minimum(np.searchsorted(self.mixed, hi ^ (lo * _MIX)), len(self.mixed) - 1)
        hit = (self.hi[at] == hi) & (self.lo[at] == lo)
        return np.where(hit, self.netns[at], np.uint64(0))


@dataclass(frozen=True)
class ProcessColumns:
    process: NDArray[np.object_]
    pid: NDArray[np.uint32]
    peer_process: NDArray[np.object_]
    peer_pid: NDArray[np.uint32]


def device_netns_column(ifindex: NDArray, device_netns: Mapping[int, int], default: int) -> NDArray[np.uint64]:
    """Per record, the netns of its device's end (``default``: a device not in the map)."""
    ifindex = np.asarray(ifindex)
    top = int(ifindex.max()) if len(ifindex) else 0
    if top < _TABLE_AT_MOST:  # ifindexes are small numbers: a table indexed by them
        table = np.full(top + 1, default, dtype=np.uint64)
        for i, netns in device_netns.items():
            if i <= top:
                table[i] = netns
        return table[ifindex]
    distinct, inverse = np.unique(ifindex, return_inverse=True)
    per_device = np.array([device_netns.get(i, default) for i in distinct.tolist()], dtype=np.uint64)
    return per_device[inverse.ravel()]


def loopback(raw: NDArray[np.void], family: NDArray) -> NDArray[np.bool_]:
    """127.0.0.0/8 and ::1: an address whose packets never leave their namespace."""
    octets = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, ADDRESS_BYTES)
    v4 = (np.asarray(family) == 4) & (octets[:, 0] == 127)
    v6 = (np.asarray(family) == 6) & ~octets[:, :15].any(axis=1) & (octets[:, 15] == 1)
    return v4 | v6


def in_every_namespace(raw: NDArray[np.void], family: NDArray) -> NDArray[np.bool_]:
    """Loopback, link-local and unspecified addresses: every namespace has them, so the
    address map names none; a local end there is taken on the device's word."""
    octets = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, ADDRESS_BYTES)
    v4 = (np.asarray(family) == 4) & ((octets[:, 0] == 127) | ((octets[:, 0] == 169) & (octets[:, 1] == 254))
                                      | ~octets[:, :4].any(axis=1))
    zero_head = ~octets[:, :15].any(axis=1)
    v6 = (np.asarray(family) == 6) & (((octets[:, 0] == 0xFE) & ((octets[:, 1] & 0xC0) == 0x80))
                                      | (zero_head & (octets[:, 15] <= 1)))
    return v4 | v6


def name_connections(owners: OwnerTable, addresses: AddressTable, *, ifindex: NDArray, egress: NDArray[np.bool_],
                     family: NDArray, proto: NDArray, sport: NDArray, dport: NDArray, src: NDArray[np.void],
                     dst: NDArray[np.void], device_netns: Mapping[int, int], default_netns: int) -> ProcessColumns:
    """Both ends' processes for each record. ``egress``: the device's end sent it, so its local
    port is the source port; ``device_netns``: ifindex -> the netns of the device's end. The
    local end is named only if its address is that namespace's (or one every namespace has):
    forwarded traffic, whose ends are elsewhere, is not named after a local socket that
    happens to have its port. The other end is looked for in the namespace its address is
    on, or, for a loopback address, in the local end's own."""
    egress = np.asarray(egress, dtype=bool)
    wanted = np.isin(proto, NAMED_PROTOCOLS)
    local_port = np.where(egress, sport, dport)
    remote_port = np.where(egress, dport, sport)
    local_ns = device_netns_column(ifindex, device_netns, default_netns)
    local_address = np.where(egress, src, dst)
    local_known = addresses.lookup(local_address)
    local_here = local_known == local_ns
    unknown = np.flatnonzero((local_known == 0) & wanted)
    local_here[unknown] = in_every_namespace(local_address[unknown], np.asarray(family)[unknown])
    remote_address = np.where(egress, dst, src)
    remote_ns = addresses.lookup(remote_address)
    looped = np.flatnonzero((remote_ns == 0) & wanted)  # to a loopback address: the other end is here too
    remote_ns[looped] = np.where(loopback(remote_address[looped], np.asarray(family)[looped]), local_ns[looped], 0)
    process, pid = owners.lookup(owner_keys(local_ns, proto, local_port), wanted & local_here)
    peer_process, peer_pid = owners.lookup(owner_keys(remote_ns, proto, remote_port), wanted & (remote_ns != 0))
    return ProcessColumns(process, pid, peer_process, peer_pid)
