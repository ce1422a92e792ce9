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
from typing import Any, Iterable

import numpy as np

from ..contract.errors import KernelError, NotApplied, PolicyError
from ..contract.policy_file import PolicyRule
from ..kernel.loader import ClassifierProgram, delete_keys, read_map, update_batch, wait_for_grace_period
from .job import ApplyJob
from .resolve import WORLD_BIT, Resolved

MODES = ("off", "monitor", "protect")
GROUPS = 64
_ZERO = ctypes.c_int(0)
_GENERATIONS = 1 << 29
_ICMP, _ICMPV6 = 1, 58
BATCH = 4096  # entries per bpf_map_update_batch; the job may stop the install between two

# The C structs of the classifier's policy maps (flows_structs.h) (key sizes as BCC reports them: 8, 24, 8).
DEVICE_KEY = np.dtype([("ifindex", "<u4"), ("set", "<u4")])
ADDR_KEY = np.dtype({"names": ["prefixlen", "set", "family", "addr"], "formats": ["<u4", "u1", "u1", "S16"],
                     "offsets": [0, 4, 5, 6], "itemsize": 24})
PORT_KEY = np.dtype([("prefixlen", "<u4"), ("set", "u1"), ("proto", "u1"), ("port", "S2")])
GROUPS_VALUE = np.dtype("<u8")
PORT_RULES = np.dtype([("allowed_to", "<u8", (GROUPS,))])


def word(generation: int, table_set: int, mode: str) -> int:
    return (generation % _GENERATIONS) << 3 | table_set << 2 | MODES.index(mode)


def unpack(value: int) -> tuple[int, int, str]:
    """(generation, set, mode) of a policy word."""
    return value >> 3, value >> 2 & 1, MODES[min(value & 3, 2)]


class PolicyTables:
    """Writes resolved policies into one classifier's policy maps; thread-safe.

    Entries go in as numpy arrays, ``BATCH`` per system call (``bpf_map_update_batch``):
    20,000 prefixes take tens of milliseconds, where one Python call per key took seconds.
    Between two batches, and once more at the switch, ``job`` may stop the install (its
    deadline passed, a newer apply superseded it): then the spare set is emptied again and
    the word is not written, so nothing of it ever takes effect."""

    def __init__(self, program: ClassifierProgram) -> None:
        self._state = program.table("policy_state")
        self._devices = program.table("policy_devices")
        self._addrs = program.table("policy_addrs")
        self._ports = program.table("policy_ports")
        self._lock = threading.Lock()

    def current(self) -> tuple[int, int, str]:
        return unpack(int(self._state[_ZERO].value))

    def install(self, resolved: Resolved, mode: str, job: ApplyJob | None = None) -> int:
        """Build ``resolved`` in the set not in use, then switch to it; returns the word.
        ``NotApplied`` if ``job`` stopped it first (the tables are as they were)."""
        job = job if job is not None else ApplyJob()
        with self._lock:
            generation, table_set, _ = self.current()
            target = 1 - table_set
            wait_for_grace_period()
            self._clear(target)
            try:
                for table, keys, values in self._entries(target, resolved):
                    for first in range(0, len(keys), BATCH):
                        job.check()
                        update_batch(table.map_fd, keys[first:first + BATCH], values[first:first + BATCH])
                return job.commit(lambda: self._switch(word(generation + 1 or 1, target, mode)))
            except NotApplied:
                self._clear(target)
                raise
            except KernelError as exc:
                self._clear(target)
                raise PolicyError(f"the policy does not fit the kernel's tables ({exc}); use fewer groups, "
                                  "prefixes or port ranges") from exc

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
        """Delete every entry of ``table_set``: one read and one delete per table."""
        for table, key_dtype, value_dtype in self._layouts():
            keys, _ = read_map(table.map_fd, table.max_entries, key_dtype, value_dtype)
            delete_keys(table.map_fd, keys[keys["set"] == table_set])

    def _layouts(self) -> tuple[tuple[Any, np.dtype, np.dtype], ...]:
        return ((self._devices, DEVICE_KEY, GROUPS_VALUE), (self._addrs, ADDR_KEY, GROUPS_VALUE),
                (self._ports, PORT_KEY, PORT_RULES))

    def _entries(self, table_set: int, resolved: Resolved) -> Iterable[tuple[Any, np.ndarray, np.ndarray]]:
        """(table, keys, values) of ``resolved`` in ``table_set``, as arrays of the C structs."""
        devices = np.zeros(len(resolved.devices), DEVICE_KEY)
        devices["ifindex"], devices["set"] = list(resolved.devices), table_set
        yield self._devices, devices, np.array(list(resolved.devices.values()), GROUPS_VALUE)
        yield self._addrs, *address_entries(table_set, resolved)
        ports = list(port_entries(resolved))
        keys = np.zeros(len(ports), PORT_KEY)
        keys["set"] = table_set
        keys["prefixlen"] = [16 + bits for _, _, bits, _ in ports]
        keys["proto"] = [proto for proto, _, _, _ in ports]
        keys["port"] = [low.to_bytes(2, "big") for _, low, _, _ in ports]
        values = np.array([allowed_to for _, _, _, allowed_to in ports], np.uint64).reshape(len(ports), GROUPS)
        yield self._ports, keys, values.view(PORT_RULES).reshape(-1)


def address_entries(table_set: int, resolved: Resolved) -> tuple[np.ndarray, np.ndarray]:
    """The address trie's keys and group masks: the two catch-alls (world), then every prefix;
    a prefix of everything (/0) is world too."""
    nets = list(resolved.prefixes)
    keys = np.zeros(2 + len(nets), ADDR_KEY)
    keys["set"] = table_set
    keys["family"] = [4, 6] + [net.version for net in nets]
    keys["prefixlen"] = [16, 16] + [16 + net.prefixlen for net in nets]
    keys["addr"][2:] = [net.network_address.packed for net in nets]
    values = np.array([WORLD_BIT, WORLD_BIT] + [groups | (WORLD_BIT if net.prefixlen == 0 else 0)
                                                for net, groups in resolved.prefixes.items()], GROUPS_VALUE)
    return keys, values


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
    active: Counter[tuple[int, int]] = Counter()
    cuts = sorted({0, 65536} | starts.keys() | ends.keys())
    for start, stop in zip(cuts, cuts[1:], strict=False):
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


def _protocols(rule: PolicyRule) -> tuple[int, ...]:
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

