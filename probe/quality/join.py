"""The quality tables joined to one drained interval's records, column by column.

    records  (tuple, ifindex) ─┬─ sockets: (tuple it sent, its netns S) ─ pairs ─> RTT, retransmits
                               └─ drops:   (tuple, device d)            ─ first ─> drop columns
                                           no record on d ─> DropCount per device and reason

Which record carries what (docs/quality.md says the same):

- A socket's stats (netns S, its own address and port first) go to the records whose
  (family, TCP, src, sport, dst, dport) is its tuple, i.e. the packets it sent: on the
  watched veth whose other end is in S (a container's or a namespace's socket: its own
  veth, not the veths its packets pass later); if no such record exists, on the devices
  whose own end is in S (a host socket: the host's devices it used). Several sockets'
  stats on one record (one carried from the interval before) are merged: the least
  minimum, the greatest maximum, ``rtt_avg_us`` = the samples' sum // their number,
  retransmitted segments summed.
- A socket with no such record in this interval (its packets were counted on the other
  side of the flip) is carried to the next interval once; unmatched again, it is given up
  and counted (``expired``).
- A drop (netns N, ifindex i, reason, tuple) belongs to device d: d = i if N is the
  host's namespace and i is watched; else the watched veth whose other end is (N, i); a
  drop with no device (ifindex 0) inside a namespace, the watched veth whose other end is
  in N. It goes to the record on d with that exact tuple, the same orientation first,
  then the reverse one (a reply's drop on the record of the request's direction); the
  record's ``drop_packets`` and ``drop_bytes`` sum every reason, ``drop_reason`` is the
  reason with the most packets (on a tie, the lowest code). Drops with no record on d go
  into one ``DropCount`` per device and reason, so device totals of drops are complete.
  Drops on devices nobody watches are ignored.

Pure numpy: no kernel. Tuples are packed into 40-byte rows and numbered once (a 64-bit
mix of the rows, sorted, then checked row by row); (tuple number, namespace or device) pairs are u64 keys matched with
``searchsorted``, never a Python loop per record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from ..contract.record import DropCount
from .tables import SOCK_KEY, SOCK_STATS, QualitySnapshot

TCP = 6
_AF = {2: 4, 10: 6}  # AF_INET, AF_INET6 -> the classifier's family numbers
_TUPLE_BYTES = 40  # family, proto, ports, src, dst: five u64 words
_MIX = np.uint64(0x9E3779B97F4A7C15)
_U32_MAX = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class DeviceEnds:
    """A watched device: the namespace of its own end (the host's, for a host-side veth)
    and, for a veth, the namespace and ifindex of its other end (0: none known)."""

    ifindex: int
    netns: int
    peer_netns: int = 0
    peer_ifindex: int = 0


@dataclass(frozen=True)
class SocketCarry:
    """Socket stats that found no record, for the next interval's join (once)."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, SOCK_KEY))
    stats: np.ndarray = field(default_factory=lambda: np.zeros(0, SOCK_STATS))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class QualityJoin:
    """The seven quality columns (``QUALITY_COLUMNS``), the unmatched drops, the sockets to
    carry to the next interval, and the carried ones given up now (``expired``)."""

    columns: dict[str, np.ndarray]
    drops: tuple[DropCount, ...]
    carry: SocketCarry
    expired: int


def join_quality(keys: np.ndarray, snapshot: QualitySnapshot, devices: Sequence[DeviceEnds], host_netns: int,
                 ifnames: Mapping[int, str] = {}, carried: SocketCarry = SocketCarry()) -> QualityJoin:
    """The quality of each record of ``keys`` (``FLOW_KEY``) from ``snapshot`` and the
    sockets ``carried`` from the interval before (see the module's rules)."""
    sock_keys = np.concatenate([carried.keys, snapshot.socket_keys])
    sock_stats = np.concatenate([carried.stats, snapshot.socket_stats])
    drop_keys = snapshot.drop_keys
    family, saddr, daddr = _unmapped(_family(sock_keys["family"]), sock_keys["saddr"], sock_keys["daddr"])
    drop_family = _family(drop_keys["family"])
    tuple_ids = _number(
        _pack(keys["family"], keys["proto"], keys["src"], keys["sport"], keys["dst"], keys["dport"]),
        _pack(family, np.full(len(sock_keys), TCP), saddr, sock_keys["sport"], daddr, sock_keys["dport"]),
        _pack(drop_family, drop_keys["proto"], drop_keys["src"], drop_keys["sport"], drop_keys["dst"],
              drop_keys["dport"]),
        _pack(drop_family, drop_keys["proto"], drop_keys["dst"], drop_keys["dport"], drop_keys["src"],
              drop_keys["sport"]),
    )
    record_tuples, sock_tuples, drop_tuples, reverse_tuples = tuple_ids
    table = _DeviceTable.of(devices)
    ifindex = keys["ifindex"].astype(np.uint64)
    rtt_columns, matched = _socket_columns(record_tuples, keys["proto"] == TCP, table, ifindex, sock_tuples,
                                           sock_keys["netns"], sock_stats)
    unmatched = ~matched
    new = np.arange(len(sock_keys)) >= len(carried)
    carry = SocketCarry(sock_keys[unmatched & new], sock_stats[unmatched & new])
    drop_columns, drops = _drop_columns(record_tuples, ifindex, table, host_netns, drop_tuples, reverse_tuples,
                                        snapshot, ifnames)
    return QualityJoin({**rtt_columns, **drop_columns}, drops, carry, int((unmatched & ~new).sum()))


def empty_columns(count: int) -> dict[str, np.ndarray]:
    """The quality columns of ``count`` records that have none."""
    columns = {name: np.zeros(count, np.uint64) for name in
               ("rtt_min_us", "rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets", "drop_bytes")}
    columns["drop_reason"] = np.full(count, "", dtype=object)
    return columns


# -- sockets -------------------------------------------------------------------------------

def _socket_columns(record_tuples, tcp, table: _DeviceTable, ifindex, sock_tuples, sock_netns, stats):
    """The RTT and retransmit columns, and which sockets found a record: the sockets are
    merged per (tuple, netns) first, so each record meets at most one per kind of match."""
    count = len(record_tuples)
    groups, group_of = np.unique(_pair_key(sock_tuples, sock_netns), return_inverse=True)
    group_of = group_of.ravel()
    merged = _merge(stats, group_of, len(groups))
    own, peer = table.column(ifindex, table.netns), table.column(ifindex, table.peer_netns)
    on_peer = np.flatnonzero(tcp & (peer != 0))
    on_own = np.flatnonzero(tcp & (own != 0))
    peer_group = _lookup(groups, _pair_key(record_tuples[on_peer], peer[on_peer]))
    own_group = _lookup(groups, _pair_key(record_tuples[on_own], own[on_own]))
    matched = np.zeros(len(groups), bool)
    matched[peer_group[peer_group >= 0]] = True
    fallback = own_group >= 0
    fallback[fallback] = ~matched[own_group[fallback]]  # the host's devices only for a socket no veth of its own carries
    matched[own_group[fallback]] = True
    rtt_min = np.full(count, _U32_MAX, np.uint64)
    columns = {name: np.zeros(count, np.uint64) for name in ("rtt_max_us", "retransmits")}
    total, samples = np.zeros(count, np.uint64), np.zeros(count, np.uint64)
    for records, group in ((on_peer[peer_group >= 0], peer_group[peer_group >= 0]),
                           (on_own[fallback], own_group[fallback])):  # each record at most once per kind
        rtt_min[records] = np.minimum(rtt_min[records], merged["min"][group])
        columns["rtt_max_us"][records] = np.maximum(columns["rtt_max_us"][records], merged["max"][group])
        total[records] += merged["sum"][group]
        samples[records] += merged["samples"][group]
        columns["retransmits"][records] += merged["retransmits"][group]
    has = samples > 0
    columns["rtt_min_us"] = np.where(has, rtt_min, np.uint64(0))
    columns["rtt_avg_us"] = np.zeros(count, np.uint64)
    columns["rtt_avg_us"][has] = total[has] // samples[has]
    return columns, matched[group_of]


def _merge(stats: np.ndarray, group_of: NDArray[np.intp], groups: int) -> dict[str, NDArray[np.uint64]]:
    """The stats of the sockets of each group: the least minimum and the greatest maximum of
    those with samples, sums of the rest."""
    merged = {"min": np.full(groups, _U32_MAX, np.uint64),
              **{name: np.zeros(groups, np.uint64) for name in ("max", "sum", "samples", "retransmits")}}
    sampled = stats["rtt_samples"] > 0
    np.minimum.at(merged["min"], group_of[sampled], stats["rtt_min_us"][sampled].astype(np.uint64))
    np.maximum.at(merged["max"], group_of[sampled], stats["rtt_max_us"][sampled].astype(np.uint64))
    for name, field_name in (("sum", "rtt_sum_us"), ("samples", "rtt_samples"), ("retransmits", "retrans_segs")):
        np.add.at(merged[name], group_of, stats[field_name].astype(np.uint64))
    return merged


def _lookup(ordered: NDArray[np.uint64], wanted: NDArray[np.uint64]) -> NDArray[np.intp]:
    """The index of each wanted key in ``ordered`` (sorted, distinct); -1: not there."""
    if not len(ordered):
        return np.full(len(wanted), -1, np.intp)
    at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
    return np.where(ordered[at] == wanted, at, -1)


# -- drops ---------------------------------------------------------------------------------

def _drop_columns(record_tuples, ifindex, table: _DeviceTable, host_netns: int, drop_tuples, reverse_tuples,
                  snapshot: QualitySnapshot, ifnames: Mapping[int, str]):
    """The drop columns and the unmatched drops per device and reason."""
    count = len(record_tuples)
    drop_keys, values = snapshot.drop_keys, snapshot.drop_values
    device = table.device_of(drop_keys["netns"], drop_keys["ifindex"], host_netns)
    watched = np.flatnonzero(device != 0)
    device, reasons = device[watched], drop_keys["reason"][watched].astype(np.uint64)
    packets, nbytes = values["packets"][watched].astype(np.uint64), values["bytes"][watched].astype(np.uint64)
    record_key = _pair_key(record_tuples, ifindex)
    order = np.argsort(record_key, kind="stable")
    record = _first(record_key, order, _pair_key(drop_tuples[watched], device))
    reverse = _first(record_key, order, _pair_key(reverse_tuples[watched], device))
    record = np.where(record >= 0, record, reverse)
    hit = record >= 0
    columns = {"drop_packets": np.zeros(count, np.uint64), "drop_bytes": np.zeros(count, np.uint64),
               "drop_reason": np.full(count, "", dtype=object)}
    np.add.at(columns["drop_packets"], record[hit], packets[hit])
    np.add.at(columns["drop_bytes"], record[hit], nbytes[hit])
    at, code = _top_reason(record[hit].astype(np.uint64), reasons[hit], packets[hit])
    columns["drop_reason"][at] = _names(code, snapshot)
    return columns, _unmatched(device[~hit], reasons[~hit], packets[~hit], nbytes[~hit], snapshot, ifnames)


def _top_reason(record, reason, packets):
    """Per record that has drops: its reason with the most packets (ties: the lowest code)."""
    groups, inverse = np.unique((record << np.uint64(32)) | reason, return_inverse=True)
    summed = np.zeros(len(groups), np.uint64)
    np.add.at(summed, inverse.ravel(), packets)
    group_record, group_reason = groups >> np.uint64(32), groups & _U32_MAX
    order = np.lexsort((group_reason, -summed.astype(np.float64), group_record))
    first = np.ones(len(order), bool)
    first[1:] = group_record[order][1:] != group_record[order][:-1]
    top = order[first]
    return group_record[top].astype(np.int64), group_reason[top]


def _unmatched(device, reason, packets, nbytes, snapshot: QualitySnapshot,
               ifnames: Mapping[int, str]) -> tuple[DropCount, ...]:
    groups, inverse = np.unique((device << np.uint64(32)) | reason, return_inverse=True)
    summed_packets, summed_bytes = np.zeros(len(groups), np.uint64), np.zeros(len(groups), np.uint64)
    np.add.at(summed_packets, inverse.ravel(), packets)
    np.add.at(summed_bytes, inverse.ravel(), nbytes)
    return tuple(DropCount(int(g >> 32), ifnames.get(int(g >> 32), ""), snapshot.reason_name(int(g & 0xFFFFFFFF)),
                           p, b)
                 for g, p, b in zip(groups.tolist(), summed_packets.tolist(), summed_bytes.tolist(), strict=True))


def _names(codes: NDArray[np.uint64], snapshot: QualitySnapshot) -> NDArray[np.object_]:
    distinct, inverse = np.unique(codes, return_inverse=True)
    names = np.empty(len(distinct), dtype=object)
    names[:] = [snapshot.reason_name(c) for c in distinct.tolist()]
    return names[inverse.ravel()]


# -- devices -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _DeviceTable:
    """The watched devices sorted by ifindex, with their ends' namespaces."""

    ifindex: NDArray[np.uint64]
    netns: NDArray[np.uint64]
    peer_netns: NDArray[np.uint64]
    peer_ifindex: NDArray[np.uint64]

    @classmethod
    def of(cls, devices: Sequence[DeviceEnds]) -> _DeviceTable:
        rows = np.array(sorted((d.ifindex, d.netns, d.peer_netns, d.peer_ifindex) for d in devices),
                        dtype=np.uint64).reshape(-1, 4)
        return cls(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])

    def column(self, ifindex: NDArray[np.uint64], values: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """Per record, its device's ``values`` entry; 0 for a device not watched."""
        if not len(self.ifindex):
            return np.zeros(len(ifindex), np.uint64)
        at = np.minimum(np.searchsorted(self.ifindex, ifindex), len(self.ifindex) - 1)
        return np.where(self.ifindex[at] == ifindex, values[at], np.uint64(0))

    def device_of(self, netns: NDArray, ifindex: NDArray, host_netns: int) -> NDArray[np.uint64]:
        """The watched device each (netns, ifindex) of a drop belongs to; 0: none."""
        netns, ifindex = netns.astype(np.uint64), ifindex.astype(np.uint64)
        veth = self.peer_netns != 0
        ends = np.concatenate([_pair_key(self.peer_ifindex[veth], self.peer_netns[veth]),
                               _pair_key(np.zeros(int(veth.sum()), np.uint64), self.peer_netns[veth])])
        owners = np.concatenate([self.ifindex[veth], self.ifindex[veth]])
        order = np.argsort(ends, kind="stable")
        found = _first(ends, order, _pair_key(ifindex, netns))
        device = np.where(found >= 0, owners[np.maximum(found, 0)] if len(owners) else 0, np.uint64(0))
        here = (netns == np.uint64(host_netns)) & (self.column(ifindex, self.ifindex) != 0)
        return np.where(here, ifindex, device).astype(np.uint64)


# -- keys ----------------------------------------------------------------------------------

def _family(family: NDArray) -> NDArray[np.uint8]:
    """4 and 6 (the classifier's numbers) whether the tables hold those or AF_INET/AF_INET6."""
    family = np.asarray(family, dtype=np.uint8).copy()
    for af, number in _AF.items():
        family[family == af] = number
    return family


def _unmapped(family: NDArray[np.uint8], saddr: NDArray[np.void],
              daddr: NDArray[np.void]) -> tuple[NDArray[np.uint8], NDArray[np.void], NDArray[np.void]]:
    """An IPv6 socket talking IPv4 (both ends ::ffff:a.b.c.d, a dual-stack listener's) as the
    IPv4 tuple its packets have on the wire, which is what the classifier counted."""
    src = np.ascontiguousarray(saddr).view(np.uint8).reshape(-1, 16)
    dst = np.ascontiguousarray(daddr).view(np.uint8).reshape(-1, 16)
    mapped = ((family == 6) & ~src[:, :10].any(axis=1) & (src[:, 10] == 0xFF) & (src[:, 11] == 0xFF)
              & ~dst[:, :10].any(axis=1) & (dst[:, 10] == 0xFF) & (dst[:, 11] == 0xFF))
    if not mapped.any():
        return family, saddr, daddr
    src, dst, family = src.copy(), dst.copy(), family.copy()
    for address in (src, dst):
        address[mapped, :4] = address[mapped, 12:16]
        address[mapped, 4:] = 0
    family[mapped] = 4
    return family, src.view("V16").reshape(-1), dst.view("V16").reshape(-1)


def _pack(family, proto, src, sport, dst, dport) -> NDArray[np.uint64]:
    """One row of five u64 words per tuple: family, proto, sport, dport (little-endian), src, dst."""
    raw = np.zeros((len(family), _TUPLE_BYTES), np.uint8)
    raw[:, 0] = family
    raw[:, 1] = proto
    raw[:, 2:4] = np.ascontiguousarray(sport, dtype="<u2").view(np.uint8).reshape(-1, 2)
    raw[:, 4:6] = np.ascontiguousarray(dport, dtype="<u2").view(np.uint8).reshape(-1, 2)
    raw[:, 8:24] = np.ascontiguousarray(src).view(np.uint8).reshape(-1, 16)
    raw[:, 24:40] = np.ascontiguousarray(dst).view(np.uint8).reshape(-1, 16)
    return raw.view("<u8")


def _number(*packed: NDArray[np.uint64]) -> list[NDArray[np.uint64]]:
    """The same number for the same tuple, across all the arrays given: numbered by a 64-bit
    mix of the words (one argsort), checked word by word; should two tuples ever share a
    mix, by all five words (a lexsort: 15x slower)."""
    words = np.concatenate(packed)
    mixed = np.zeros(len(words), np.uint64)
    for column in words.T:
        mixed = (mixed ^ column) * _MIX
        mixed ^= mixed >> np.uint64(29)
    _, first, inverse = np.unique(mixed, return_index=True, return_inverse=True)
    numbers: NDArray[np.uint64] = inverse.ravel().astype(np.uint64)
    if (words != words[first[numbers]]).any():  # not every row equals its number's first
        numbers = _number_exactly(words)
    cuts = np.cumsum([len(p) for p in packed])[:-1]
    return np.split(numbers, cuts)


def _number_exactly(words: NDArray[np.uint64]) -> NDArray[np.uint64]:
    order = np.lexsort(words.T[::-1])
    ordered = words[order]
    new = np.ones(len(ordered), bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    numbers = np.empty(len(ordered), np.uint64)
    numbers[order] = np.cumsum(new) - 1
    return numbers


def _pair_key(high: NDArray, low: NDArray) -> NDArray[np.uint64]:
    """(tuple number or ifindex) << 32 | (namespace inode or ifindex)."""
    return (np.asarray(high, dtype=np.uint64) << np.uint64(32)) | np.asarray(low, dtype=np.uint64)


def _first(keys: NDArray[np.uint64], order: NDArray[np.intp], wanted: NDArray[np.uint64]) -> NDArray[np.intp]:
    """The index of the first of ``keys`` (sorted by ``order``) equal to each wanted; -1: none."""
    if not len(keys):
        return np.full(len(wanted), -1, np.intp)
    ordered = keys[order]
    at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
    return np.where(ordered[at] == wanted, order[at], -1)
