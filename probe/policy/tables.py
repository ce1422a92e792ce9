"""The policy tables in the kernel, and the one-word switch between two sets of them.

    policy_state[0]  = generation << 3 | set << 2 | mode      (mode: 0 off, 1 monitor, 2 protect)
    policy_devices   {set, ifindex}            -> groups of the device's own end
    policy_addrs     LPM {set, family, addr}   -> groups of an address (catch-all: world)
    policy_ports     LPM {set, proto, port}    -> allowed_to[from group] = mask of `to` groups

``install`` fills the set not in use (after a grace period: no program still reads it from
the time before the last switch), then writes the word: one 4-byte store switches mode and
tables together. Packets judged before see the old set whole, packets after the new one
whole; flows judged under an older word are judged again on their next packet.
"""
from __future__ import annotations

import ctypes
import threading
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np

from ..errors import PolicyError
from ..kernel import ClassifierProgram, wait_for_grace_period
from .model import Rule
from .resolve import WORLD_BIT, Resolved

MODES = ("off", "monitor", "protect")
GROUPS = 64
_ZERO = ctypes.c_int(0)
_GENERATIONS = 1 << 29
_ICMP, _ICMPV6 = 1, 58


def word(generation: int, table_set: int, mode: str) -> int:
    return (generation % _GENERATIONS) << 3 | table_set << 2 | MODES.index(mode)


def unpack(value: int) -> tuple[int, int, str]:
    """(generation, set, mode) of a policy word."""
    return value >> 3, value >> 2 & 1, MODES[min(value & 3, 2)]


class PolicyTables:
    """Writes resolved policies into one classifier's policy maps; thread-safe."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._state = program.table("policy_state")
        self._devices = program.table("policy_devices")
        self._addrs = program.table("policy_addrs")
        self._ports = program.table("policy_ports")
        self._lock = threading.Lock()

    def current(self) -> tuple[int, int, str]:
        return unpack(int(self._state[_ZERO].value))

    def install(self, resolved: Resolved, mode: str) -> int:
        """Build ``resolved`` in the set not in use, then switch to it; returns the word."""
        with self._lock:
            generation, table_set, _ = self.current()
            target = 1 - table_set
            wait_for_grace_period()
            self._clear(target)
            try:
                self._fill(target, resolved)
            except Exception as exc:  # bcc raises bare Exception when a map is full
                self._clear(target)
                raise PolicyError(f"the policy does not fit the kernel's tables ({exc}); use fewer groups, "
                                  "prefixes or port ranges") from exc
            return self._switch(word(generation + 1 or 1, target, mode))

    def off(self) -> int:
        with self._lock:
            generation, table_set, _ = self.current()
            return self._switch(word(generation + 1, table_set, "off"))

    def _switch(self, value: int) -> int:
        if value == 0:  # generation wrapped: 0 is the word of flows never judged
            value = word(1, 0, "off")
        self._state[_ZERO] = ctypes.c_uint32(value)
        return value

    def _clear(self, table_set: int) -> None:
        for table in (self._devices, self._addrs, self._ports):
            for key in [k for k in table.keys() if k.set == table_set]:
                try:
                    del table[key]
                except KeyError:
                    pass

    def _fill(self, table_set: int, resolved: Resolved) -> None:
        for ifindex, groups in resolved.devices.items():
            self._devices[self._devices.Key(ifindex, table_set)] = self._devices.Leaf(groups)
        for family in (4, 6):
            self._addrs[self._addr_key(table_set, family, 0, b"")] = ctypes.c_uint64(WORLD_BIT)
        for network, groups in resolved.prefixes.items():
            family = 4 if network.version == 4 else 6
            groups |= WORLD_BIT if network.prefixlen == 0 else 0  # a group of everything is world too
            self._addrs[self._addr_key(table_set, family, network.prefixlen,
                                       network.network_address.packed)] = ctypes.c_uint64(groups)
        for proto, low, bits, allowed_to in port_entries(resolved):
            key = self._ports.Key(16 + bits, table_set, proto, (ctypes.c_ubyte * 2)(low >> 8, low & 0xFF))
            leaf = self._ports.Leaf()
            ctypes.memmove(ctypes.addressof(leaf), allowed_to.ctypes.data, allowed_to.nbytes)
            self._ports[key] = leaf

    def _addr_key(self, table_set: int, family: int, prefixlen: int, packed: bytes):
        addr = (ctypes.c_ubyte * 16)(*packed.ljust(16, b"\0"))
        return self._addrs.Key(16 + prefixlen, table_set, family, addr)


# -- rules as port prefixes ---------------------------------------------------------------


def port_entries(resolved: Resolved) -> Iterable[tuple[int, int, int, np.ndarray]]:
    """(proto, first port, prefix bits, allowed_to[64]) for the kernel's port trie: the port
    space of each protocol cut where any rule's range starts or ends, each piece that some
    rule allows written as prefixes with the OR of the rules covering it."""
    by_proto: dict[int, list[tuple[int, int, int, int]]] = {}
    for rule in resolved.policy.rules:
        source, target = resolved.bit(rule.source), resolved.bit(rule.target)
        for proto in _protocols(rule):
            for low, high in rule.ports or ((0, 65535),):
                by_proto.setdefault(proto, []).append((low, high, source, target))
    for proto, ranges in by_proto.items():
        yield from ((proto, *entry) for entry in _sweep(ranges))


def _sweep(ranges: list[tuple[int, int, int, int]]) -> Iterable[tuple[int, int, np.ndarray]]:
    """One pass over the cuts, keeping the (from, to) pairs whose ranges cover the piece."""
    starts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    ends: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for low, high, source, target in ranges:
        starts[low].append((source, target))
        ends[high + 1].append((source, target))
    active: Counter = Counter()
    cuts = sorted({0, 65536} | starts.keys() | ends.keys())
    for start, stop in zip(cuts, cuts[1:]):
        active.subtract(ends.get(start, ()))
        active.update(starts.get(start, ()))
        active = +active  # drop the pairs no range covers any more
        if not active:
            continue
        allowed_to = np.zeros(GROUPS, dtype=np.uint64)
        for source, target in active:
            allowed_to[source.bit_length() - 1] |= np.uint64(target)
        for first, bits in port_prefixes(start, stop - 1):
            yield first, bits, allowed_to


def _protocols(rule: Rule) -> tuple[int, ...]:
    """``icmp`` means ICMP for IPv4 and ICMPv6 for IPv6."""
    return (_ICMP, _ICMPV6) if rule.proto == _ICMP else (rule.proto,)


def port_prefixes(low: int, high: int) -> list[tuple[int, int]]:
    """The fewest (first port, prefix bits) blocks that cover ``low..high`` exactly."""
    blocks = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        blocks.append((low, 16 - size.bit_length() + 1))
        low += size
    return blocks

