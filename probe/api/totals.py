"""Per-connection counters since attach: what the HTTP API serves.

    every interval:  totals(batch)                    column-wise, in numpy: no Python per record
    on detach:       await forget_device(totals, daemon, ifindex)   (``forgetting``: the listener)
    on read:         await current_view(totals, daemon, ifindex)   published + live interval

``ConnectionTotals`` is an interval listener (``build_probe`` subscribes it): it adds each
published interval's records to one entry per connection, keyed by (ifindex, direction,
proto, src_ip, dst_ip, src_port, dst_port), keeping the earliest ``first_seen``, the latest
``last_seen`` and the sums of packets and bytes. Each connection gets a small integer id
when it is first seen (live or published); the id stays the same until the entry is
evicted or its device forgotten.

Overflow. Packets that found the kernel's flow map full belong to no connection; each
interval reports them per device and direction (``Envelope.overflow``, ifindex 0 for what
not even the overflow map could hold). They are summed per (ifindex, direction) in
``overflow_view()``, so that a device's connections plus its overflow are its exact
totals. They come with published intervals only (a live read carries no overflow), and
are forgotten with their device.

Data layout. Each tracked connection has a *slot*, 0 .. len - 1, in the order it was
first published; ``_keys[slot]`` is its ``ConnectionKey``, and every other field is one numpy
array indexed by slot (``_Columns``): ``id``, ``ifindex``, ``packets`` and ``bytes``
(uint64: each interval's counts are below 2**63), ``first_seen``, ``last_seen``, the fields
outside the key (``family``, ``ifname``, ``container_name``: those of the connection's
first published record; ``verdict``: its latest; the owner and process fields ``WHO``: the
latest that is not empty), and the packed key with its hash. A packed key (``packed_keys``)
is 14 uint64 words, a column per connection: (ifindex, ports), (direction, protocol), then
each address's text NUL-padded to 48 bytes; ``HashIndex`` finds a slot by the key's hash
and checks the packed key (open addressing, one numpy pass per probing step).

An interval is added column-wise (``_Interval``): its keys are packed and hashed, looked up
all at once, the connections not seen before get slots at the end (ids and key tuples made
for those only), and the counters are merged with ``np.add.at`` / ``np.minimum.at`` /
``np.maximum.at``. Python runs per record only for new connections' ids while some were
seen live, and for the records of a forgotten device's residue. ~0.035 CPU-s per full
interval of 131,072 connections, against ~0.1 for the dict per connection used before
(``tests/bench/bench_totals.py``).

Memory is bounded: beyond ``max_entries`` the least recently seen connections (smallest
``last_seen``; the earliest published first among equals) are evicted after the interval
that overflowed, and counted in ``evicted``. Evicting or forgetting compacts the slots,
keeping their order.

Forgetting a device. When a device is detached its counts still sit in the kernel's
current interval (the "residue") and reach the listener with the next poll. If the device
is attached again before then, that interval mixes old and new counts. ``forget`` is
handed the live records read *after* the detach, and from then on:

* an interval that ended before that read holds only old counts: the device's records
  are dropped;
* the interval the read saw (same ``interval_start``) has the residue subtracted;
* later intervals are counted as they are.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from itertools import compress
from typing import Any, Awaitable, Callable, Collection, Sequence

import numpy as np
import numpy.typing as npt

from ..contract.flow_batch import FlowBatch
from ..contract.record import Envelope, FlowRecord
from ..kernel.devices import AttachedDevice
from ..seams import DetachListener
from .key_index import KEY_WORDS, HashIndex, key_hashes, nonzero_words, packed_keys

DEFAULT_MAX_ENTRIES = 262_144  # ~0.5 KiB each with the key: ~130 MiB at the cap
# How long a view waits for the listener to add a polled interval before it gives up on
# consistency: the interval is published first, which on a loaded host or a slow JetStream
# takes far longer than the poll (0.2 s served the totals alone without the polled interval's
# packets: 1 full test run).
log = logging.getLogger("connstats.probe.api")
VIEW_DEADLINE_SECONDS = 2.0
VIEW_RETRY_SECONDS = 0.01
# A device's attach time is taken just after its filters are in place, and kernel times
# are converted to wall time with a few microseconds of jitter: this much earlier still
# counts as "since attach".
SINCE_SLACK_NS = 100_000_000

ConnectionKey = tuple[int, str, int, str, str, int, int]
# a record as ``_Interval.tuples`` gives it: (key, ifname, family, container_name, verdict,
# pod, workload, runtime, process, pid, peer_process, peer_pid, packets, bytes, first_seen,
# last_seen)
RecordTuple = tuple[Any, ...]
Ifindexes = Collection[int] | None  # the devices a view is of; None: all


def connection_key(r: FlowRecord) -> ConnectionKey:
    """(ifindex, direction, proto, src_ip, dst_ip, src_port, dst_port)."""
    return (r.ifindex, r.direction, r.proto, r.src_ip, r.dst_ip, r.src_port, r.dst_port)


@dataclass(slots=True)
class OverflowTotal:
    """Packets and bytes of one device and direction that no connection could hold, since attach."""

    ifindex: int  # 0: not even the overflow map had room for the device
    ifname: str
    direction: str
    packets: int
    bytes: int
    last_interval_end: int  # ns since the epoch: the end of the last interval that reported some


@dataclass(slots=True)
class ConnectionTotal:
    """One connection's counters since its device was attached: a copy, made per view."""

    id: int
    ifindex: int
    ifname: str
    direction: str
    family: int
    proto: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    packets: int
    bytes: int
    first_seen: int  # ns since the epoch, UTC
    last_seen: int
    container_name: str
    verdict: str = ""  # the policy's verdict in the connection's latest interval
    # who: the latest known (not empty) of the connection's records; "" and 0 when none was
    pod: str = ""
    workload: str = ""
    runtime: str = ""
    process: str = ""
    pid: int = 0
    peer_process: str = ""
    peer_pid: int = 0


_KEY_FIELDS = ("ifindex", "direction", "proto", "src_ip", "dst_ip", "src_port", "dst_port")
WHO = ("pod", "workload", "runtime", "process", "pid", "peer_process", "peer_pid")  # the latest known
_STATIC_FIELDS = ("ifname", "family", "container_name", "verdict", *WHO)  # per connection, outside the key
_NO_TIME = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # first_seen, last_seen of a fresh slot
class _Interval:
    """The records of one batch as columns: packed keys, their hashes, counters.

    ``rows`` are the records' positions in ``batch`` (after ``take``, a subset): key tuples
    and the fields outside the key are read from the batch only for the records that need
    them. ``used`` tells the key words that are not zero throughout (``nonzero_words``).
    """

    __slots__ = ("batch", "rows", "used", "words", "hashes", "ifindex", "packets", "bytes",
                 "first_seen", "last_seen")

    def __init__(self, batch: FlowBatch, rows: np.ndarray, used: np.ndarray,
                 columns: tuple[np.ndarray, ...]) -> None:
        self.batch = batch
        self.rows = rows
        self.used = used
        (self.words, self.hashes, self.ifindex, self.packets, self.bytes, self.first_seen,
         self.last_seen) = columns

    @classmethod
    def of(cls, batch: FlowBatch | None) -> _Interval:
        if batch is None:
            batch = FlowBatch.empty(Envelope("", "", 0, 0, 0))
        c = batch.columns
        words = packed_keys(batch)
        used = nonzero_words(words)
        # copies (np.array), not views of the batch: a residue is subtracted in place
        return cls(batch, np.arange(len(batch)), used, (
            words, key_hashes(words, used), np.array(c.ifindex, dtype=np.int64),
            np.array(c.packets, dtype=np.uint64), np.array(c.bytes, dtype=np.uint64),
            np.array(c.first_seen, dtype=np.int64), np.array(c.last_seen, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, keep: np.ndarray) -> _Interval:
        """The records where ``keep`` is True."""
        return _Interval(self.batch, self.rows[keep], self.used, (self.words[:, keep], *(
            column[keep] for column in (self.hashes, self.ifindex, self.packets, self.bytes,
                                        self.first_seen, self.last_seen))))

    def field(self, name: str, at: np.ndarray) -> list[Any]:
        """Field ``name`` of the records at positions ``at``, as Python values (of the
        type of the field ``name`` names: Any, as ``FlowBatch.column`` says)."""
        rows = self.rows[at]
        column = getattr(self.batch.columns, name, None)
        if isinstance(column, np.ndarray):
            return column[rows].tolist()
        values = self.batch.column(name)
        if not isinstance(values, Sequence):  # an envelope field, repeated: not one read here
            values = list(values)
        return list(map(values.__getitem__, rows.tolist()))

    def keys(self, at: np.ndarray) -> list[ConnectionKey]:
        return list(zip(*(self.field(name, at) for name in _KEY_FIELDS), strict=True))

    def tuples(self) -> list[RecordTuple]:
        """(key, *_STATIC_FIELDS, packets, bytes, first_seen, last_seen) per record."""
        everything = np.arange(len(self))
        return list(zip(self.keys(everything), *(self.field(name, everything) for name in _STATIC_FIELDS),
                        self.packets.tolist(), self.bytes.tolist(), self.first_seen.tolist(),
                        self.last_seen.tolist(), strict=True))


class _Columns:
    """The table's fields, one numpy array per field, indexed by slot; ``words``, the packed
    keys, a column per slot, and ``used``, the key words that some slot ever had non-zero."""

    DTYPES = {"id": np.int64, "ifindex": np.int64, "packets": np.uint64, "bytes": np.uint64,
              "first_seen": np.int64, "last_seen": np.int64, "family": np.int64, "hash": np.uint64,
              "ifname": object, "container_name": object, "verdict": object,
              **{name: np.int64 if name.endswith("pid") else object for name in WHO}}

    # the fields of DTYPES, set in __init__ by name
    id: np.ndarray
    ifindex: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    family: np.ndarray
    hash: np.ndarray
    ifname: np.ndarray
    container_name: np.ndarray
    verdict: np.ndarray
    pod: np.ndarray
    workload: np.ndarray
    runtime: np.ndarray
    process: np.ndarray
    pid: np.ndarray
    peer_process: np.ndarray
    peer_pid: np.ndarray

    def __init__(self) -> None:
        for name, dtype in self.DTYPES.items():
            setattr(self, name, np.zeros(0, dtype=dtype))
        self.words = np.zeros((KEY_WORDS, 0), dtype=np.uint64)
        self.used = np.zeros(KEY_WORDS, dtype=bool)

    def append(self, fresh: dict[str, npt.ArrayLike], words: np.ndarray) -> None:
        count = words.shape[1]
        for name, dtype in self.DTYPES.items():
            value = np.asarray(fresh[name], dtype=dtype)
            setattr(self, name, np.concatenate([getattr(self, name), np.broadcast_to(value, count)]))
        self.words = np.concatenate([self.words, words], axis=1)
        self.used |= nonzero_words(words)

    def keep(self, mask: np.ndarray) -> None:
        for name in self.DTYPES:
            setattr(self, name, getattr(self, name)[mask])
        self.words = self.words[:, mask]


@dataclass(frozen=True, slots=True)
class _Forgotten:
    """A detached device whose residue in the kernel's current interval must not count."""

    until_ns: int  # intervals that ended by then hold only pre-detach counts
    residue_start: int | None  # interval_start of the live read; None if it was empty
    residue: dict[ConnectionKey, tuple[int, int]]  # packets, bytes per connection


class ConnectionTotals:
    """Counters since attach per connection; call it with each published interval."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.evicted = 0
        self.intervals = 0
        self.ingested_until: int | None = None  # interval_end of the last interval added
        self._columns = _Columns()
        self._keys: list[ConnectionKey] = []  # slot -> key
        self._index = HashIndex()
        self._next_id = 1
        self._pending_ids: dict[ConnectionKey, int] = {}  # seen live, not yet published
        self._forgotten: dict[int, _Forgotten] = {}
        self._overflow: dict[tuple[int, str], OverflowTotal] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __call__(self, batch: FlowBatch) -> None:
        """Add one published interval (the daemon calls this; it never raises)."""
        envelope = batch.envelope
        self._add_overflow(envelope)
        interval = _Interval.of(batch)
        if self._forgotten:
            interval = self._settle_forgotten(envelope.interval_start, envelope.interval_end,
                                              interval, consume=True)
        slots = self._find(interval)
        new = np.flatnonzero(slots < 0)
        if len(new):
            slots[new] = self._add_slots(interval, new)
        self._merge(interval, slots)
        self.intervals += 1
        self.ingested_until = envelope.interval_end
        if len(self) > self.max_entries:
            self._evict(len(self) - self.max_entries)
        if len(self._pending_ids) > self.max_entries:
            self._pending_ids.clear()  # ids of live connections that never got published

    # -- slots ------------------------------------------------------------------------------

    def _find(self, interval: _Interval) -> np.ndarray:
        """Each record's slot, -1 for connections not tracked."""
        return self._index.find(interval.hashes, interval.words, interval.used, self._columns)

    def _add_slots(self, interval: _Interval, new: np.ndarray) -> np.ndarray:
        """Slots for the records at ``new`` (not tracked), made in the order of their first
        record, which gives the fields outside the key."""
        words = interval.words[:, new]
        _, first, inverse = np.unique(interval.hashes[new], return_index=True, return_inverse=True)
        if not all((row == row[first][inverse]).all() for row in words[interval.used]):  # a shared hash
            _, first, inverse = np.unique(words.T, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in the order of their first record
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        at = new[first[order]]
        base = len(self._keys)
        keys = interval.keys(at)
        fresh: dict[str, npt.ArrayLike] = dict(zip(_STATIC_FIELDS, (interval.field(name, at) for name in _STATIC_FIELDS), strict=True))
        fresh.update(id=self._new_ids(keys), ifindex=interval.ifindex[at], hash=interval.hashes[at],
                     packets=0, bytes=0, first_seen=_NO_TIME[0], last_seen=_NO_TIME[1])
        self._columns.append(fresh, interval.words[:, at])
        self._keys.extend(keys)
        self._index.index(self._columns.hash, base)
        return base + rank[inverse.ravel()]

    def _new_ids(self, keys: list[ConnectionKey]) -> list[int] | np.ndarray:
        """Ids of newly published connections: the one seen live, else the next."""
        if not self._pending_ids:
            first, self._next_id = self._next_id, self._next_id + len(keys)
            return np.arange(first, self._next_id)
        ids = []
        for key in keys:
            id = self._pending_ids.pop(key, None)
            if id is None:
                id, self._next_id = self._next_id, self._next_id + 1
            ids.append(id)
        return ids

    def _merge(self, interval: _Interval, slots: np.ndarray) -> None:
        c = self._columns
        np.add.at(c.packets, slots, interval.packets)
        np.add.at(c.bytes, slots, interval.bytes)
        np.minimum.at(c.first_seen, slots, interval.first_seen)
        np.maximum.at(c.last_seen, slots, interval.last_seen)
        c.verdict[slots] = interval.field("verdict", np.arange(len(interval)))  # the latest one
        _set_known({name: getattr(c, name) for name in WHO}, interval, slots)

    def _evict(self, count: int) -> None:
        victims = np.argsort(self._columns.last_seen, kind="stable")[:count]
        keep = np.ones(len(self), dtype=bool)
        keep[victims] = False
        self._keep(keep)
        self.evicted += count

    def _keep(self, mask: np.ndarray) -> None:
        """Keep the slots where ``mask`` is True, in order, numbered from 0 again."""
        self._columns.keep(mask)
        self._keys = list(compress(self._keys, mask.tolist()))
        self._index = HashIndex()
        self._index.index(self._columns.hash, 0)

    # -- overflow ---------------------------------------------------------------------------

    def _add_overflow(self, envelope: Envelope) -> None:
        for o in envelope.overflow:
            gone = self._forgotten.get(o.ifindex)
            if gone is not None and envelope.interval_end <= gone.until_ns:
                continue  # counted before the detach
            total = self._overflow.get((o.ifindex, o.direction))
            if total is None:
                self._overflow[(o.ifindex, o.direction)] = OverflowTotal(
                    o.ifindex, o.ifname, o.direction, o.packets, o.bytes, envelope.interval_end)
            else:
                total.packets += o.packets
                total.bytes += o.bytes
                total.last_interval_end = max(total.last_interval_end, envelope.interval_end)

    def overflow_view(self, ifindexes: Ifindexes = None) -> list[OverflowTotal]:
        """Copies of the overflow totals of ``ifindexes`` (all if None), by ifindex and direction."""
        return [replace(t) for key, t in sorted(self._overflow.items())
                if ifindexes is None or key[0] in ifindexes]

    # -- forgetting a device ----------------------------------------------------------------

    def forget(self, ifindex: int, live: FlowBatch | None = None,
               until_ns: int | None = None) -> int:
        """Drop a detached device's totals; return how many connections were dropped.

        ``live`` is what ``daemon.live_records()`` returned after the detach, and
        ``until_ns`` the wall clock after that read: the device's counts in
        intervals that ended by then, and its residue in the live interval, are ignored.
        """
        doomed = self._columns.ifindex == ifindex
        dropped = int(doomed.sum())
        if dropped:
            self._keep(~doomed)
        for key in [key for key in self._overflow if key[0] == ifindex]:
            del self._overflow[key]
        mine = _Interval.of(live)
        mine = mine.take(mine.ifindex == ifindex)
        everything = np.arange(len(mine))
        self._forgotten[ifindex] = _Forgotten(
            until_ns=time.time_ns() if until_ns is None else until_ns,
            residue_start=live.envelope.interval_start if live is not None and len(mine) else None,
            residue=dict(zip(mine.keys(everything), zip(mine.packets.tolist(), mine.bytes.tolist(), strict=True), strict=True)),
        )
        return dropped

    def _settle_forgotten(self, start: int, end: int, interval: _Interval,
                          consume: bool) -> _Interval:
        """The records of one interval without what forgotten devices counted before detach."""
        keep = np.ones(len(interval), dtype=bool)
        for ifindex, gone in self._forgotten.items():
            mine = interval.ifindex == ifindex
            if end <= gone.until_ns:
                keep &= ~mine
            elif start == gone.residue_start:
                _subtract_residue(interval, np.flatnonzero(mine), gone.residue, keep)
        if consume:
            for ifindex in [i for i, gone in self._forgotten.items() if end > gone.until_ns]:
                del self._forgotten[ifindex]
        return interval if keep.all() else interval.take(keep)

    # -- reading ------------------------------------------------------------------------------

    def is_current(self, live: FlowBatch | None) -> bool:
        """True if ``live`` is the interval right after the last one added."""
        if not live or self.ingested_until is None:
            return True
        return live.envelope.interval_start == self.ingested_until

    def view(self, live: FlowBatch | None = None, ifindexes: Ifindexes = None,
             since_ns: dict[int, int] | None = None) -> list[ConnectionTotal]:
        """Totals plus the ``live`` interval, for ``ifindexes`` (all if None), by id.

        ``since_ns`` maps an ifindex to its attach time: connections last seen before
        it (less ``SINCE_SLACK_NS``) belong to an earlier attachment and are left out; a
        safety net for detaches that did not ``forget``.
        """
        counters = {name: getattr(self._columns, name).copy() for name in _LIVE_FIELDS}
        totals: list[ConnectionTotal] = []
        if live:
            records = self._live_records(live, ifindexes)
            slots = self._find(records)
            tracked = slots >= 0
            _add_tracked_live(counters, records.take(tracked), slots[tracked])
            totals = self._live_only(records.take(~tracked))
        totals += self._snapshots(self._slots_on(ifindexes), counters)
        if since_ns:
            totals = [t for t in totals if t.last_seen >= since_ns.get(t.ifindex, 0) - SINCE_SLACK_NS]
        return sorted(totals, key=lambda t: t.id)

    def _slots_on(self, ifindexes: Ifindexes) -> np.ndarray:
        if ifindexes is None:
            return np.arange(len(self))
        return np.flatnonzero(np.isin(self._columns.ifindex, np.fromiter(ifindexes, dtype=np.int64)))

    def _snapshots(self, slots: np.ndarray, counters: dict[str, np.ndarray]) -> list[ConnectionTotal]:
        """A ``ConnectionTotal`` per slot of ``slots``, in that order, with ``counters``
        (``_LIVE_FIELDS``, by slot) in place of the table's."""
        columns = {name: getattr(self._columns, name) for name in ("id", "ifname", "family")} | counters
        fields = [columns[name][slots].tolist() for name in (
            "id", "ifname", "family", "packets", "bytes", "first_seen", "last_seen", "container_name",
            "verdict", *WHO)]
        # key: a ConnectionKey, (ifindex, direction, proto, src_ip, dst_ip, src_port, dst_port)
        return [ConnectionTotal(id, key[0], ifname, key[1], family, key[2], key[3], key[4], key[5], key[6],
                                packets, nbytes, first, last, container, verdict, *who)
                for key, id, ifname, family, packets, nbytes, first, last, container, verdict, *who
                in zip([self._keys[s] for s in slots.tolist()], *fields, strict=True)]

    def _live_records(self, live: FlowBatch, ifindexes: Ifindexes) -> _Interval:
        """The live interval's records on ``ifindexes``, less forgotten devices' residue."""
        records = _Interval.of(live)
        if self._forgotten:
            records = self._settle_forgotten(live.envelope.interval_start, live.envelope.interval_end,
                                             records, consume=False)
        if ifindexes is not None:
            records = records.take(np.isin(records.ifindex, np.fromiter(ifindexes, dtype=np.int64)))
        return records

    def _live_only(self, records: _Interval) -> list[ConnectionTotal]:
        """Connections seen live but not yet published, with the id they will be published with."""
        merged: dict[ConnectionKey, ConnectionTotal] = {}
        for key, ifname, family, container, verdict, *rest in records.tuples():
            who, (packets, nbytes, first, last) = rest[:len(WHO)], rest[len(WHO):]
            total = merged.get(key)
            if total is None:
                id = self._pending_ids.get(key)
                if id is None:
                    id = self._pending_ids[key] = self._next_id
                    self._next_id += 1
                merged[key] = ConnectionTotal(id, key[0], ifname, key[1], family, key[2], key[3], key[4],
                                              key[5], key[6], packets, nbytes, first, last, container, verdict,
                                              *who)
                continue
            total.packets += packets
            total.bytes += nbytes
            total.first_seen = min(total.first_seen, first)
            total.last_seen = max(total.last_seen, last)
            total.container_name = container or total.container_name
            total.verdict = verdict
            for name, value in zip(WHO, who, strict=True):
                if value:
                    setattr(total, name, value)
        return list(merged.values())


_LIVE_FIELDS = ("packets", "bytes", "first_seen", "last_seen", "container_name", "verdict", *WHO)  # what a live read adds to


def _add_tracked_live(counters: dict[str, np.ndarray], records: _Interval, slots: np.ndarray) -> None:
    """Add live ``records`` of tracked connections (at ``slots``) to copies of the table's
    ``counters``; a record's container name, if it has one, replaces the connection's."""
    np.add.at(counters["packets"], slots, records.packets)
    np.add.at(counters["bytes"], slots, records.bytes)
    np.minimum.at(counters["first_seen"], slots, records.first_seen)
    np.maximum.at(counters["last_seen"], slots, records.last_seen)
    names = np.asarray(records.field("container_name", np.arange(len(records))), dtype=object)
    named = names != ""
    counters["container_name"][slots[named]] = names[named]
    counters["verdict"][slots] = records.field("verdict", np.arange(len(records)))  # the latest
    _set_known(counters, records, slots)


def _set_known(columns: dict[str, np.ndarray], records: _Interval, slots: np.ndarray) -> None:
    """Each ``WHO`` field that a record of ``records`` has (not empty) becomes its slot's
    (the later record wins); a field no record has costs one check."""
    everything = np.arange(len(records))
    for name in WHO:
        if not len(records) or not records.batch.filled(name):
            continue
        values = np.asarray(records.field(name, everything), dtype=columns[name].dtype)
        known = values != (0 if name.endswith("pid") else "")
        columns[name][slots[known]] = values[known]


def _subtract_residue(interval: _Interval, mine: np.ndarray,
                      residue: dict[ConnectionKey, tuple[int, int]], keep: np.ndarray) -> None:
    """Take a forgotten device's pre-detach counts off its records at ``mine`` (in place);
    a record that has nothing left is dropped from ``keep``."""
    for i, key in zip(mine.tolist(), interval.keys(mine), strict=True):
        counted = residue.get(key)
        if counted is None:
            continue
        packets, nbytes = counted
        if int(interval.packets[i]) <= packets:
            keep[i] = False
        else:
            interval.packets[i] -= np.uint64(packets)
            interval.bytes[i] -= np.uint64(nbytes)


# -- the daemon side ------------------------------------------------------------------------

LiveRecords = Callable[[], Awaitable[FlowBatch]]


async def forget_device(totals: ConnectionTotals, live_records: LiveRecords, ifindex: int) -> int:
    """Forget a device that was just detached: call after ``daemon.detach`` returned.

    ``live_records`` is ``daemon.live_records``; see ``ConnectionTotals.forget``.
    """
    live = await live_records()
    return totals.forget(ifindex, live, until_ns=time.time_ns())


def forgetting(totals: ConnectionTotals, live_records: LiveRecords) -> DetachListener:
    """A detach listener (``ProbePort.on_detach``): each detached device (whoever detached
    it) forgotten in ``totals`` with ``forget_device``."""

    async def forget(device: AttachedDevice) -> None:
        await forget_device(totals, live_records, device.ifindex)

    return forget


async def current_view(totals: ConnectionTotals, live_records: LiveRecords,
                       ifindexes: Ifindexes = None, since_ns: dict[int, int] | None = None,
                       deadline: float = VIEW_DEADLINE_SECONDS) -> list[ConnectionTotal]:
    """Published totals plus the current interval, read so that no interval counts twice.

    A live read can race a poll: it may show an interval the listener has already added
    (read again) or the one after an interval the listener has not yet seen: polled, and
    still being published (wait and read again). After ``deadline`` seconds (JetStream
    away: the interval waits in the outbox) the totals alone are served, and logged.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        live = await live_records()
        if totals.is_current(live):
            return totals.view(live, ifindexes, since_ns)
        if loop.time() >= give_up:
            log.info("the HTTP API serves totals without the last %.0f s: a polled interval is not "
                     "published yet", deadline)
            return totals.view(None, ifindexes, since_ns)
        await asyncio.sleep(VIEW_RETRY_SECONDS)
