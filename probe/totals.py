"""Per-connection counters since attach: what the HTTP API serves.

    every interval:  totals(batch)                    column-wise: one dict lookup per record, in C
    on detach:       await forget_device(totals, daemon, ifindex)
    on read:         await current_view(totals, daemon, ifindex)   published + live interval

``ConnectionTotals`` is an interval listener (``http_api.tracked_totals`` registers it): it adds each
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
first published. ``_index`` maps a ``ConnectionKey`` to its slot and ``_keys`` is the
reverse; everything else is one numpy array per field, indexed by slot (``_Columns``):
``id``, ``ifindex``, ``packets`` and ``bytes`` (uint64: each interval's counts are below
2**63), ``first_seen``, ``last_seen`` and the fields outside the key (``family``,
``ifname``, ``container_name``, fixed when the connection is first published). An interval
is added column-wise (``_Interval``): its key tuples are zipped from the columns and looked
up with ``map(dict.get)`` (in C), connections not seen before get slots at the end, and the
counters are merged with ``np.add.at`` / ``np.minimum.at`` / ``np.maximum.at``. No Python
statement runs per record, except for new connections' ids while some were seen live and
for the records of a forgotten device's residue.

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
import time
from dataclasses import dataclass, replace
from itertools import compress, repeat
from typing import Any, Awaitable, Callable

import numpy as np

from .record import DIRECTIONS, Envelope, FlowRecord
from .flow_batch import FlowBatch

DEFAULT_MAX_ENTRIES = 262_144  # ~0.5 KiB each with the key: ~130 MiB at the cap
VIEW_ATTEMPTS = 20  # reads of the live interval before a view gives up on consistency
VIEW_RETRY_SECONDS = 0.01
# A device's attach time is taken just after its filters are in place, and kernel times
# are converted to wall time with a few microseconds of jitter: this much earlier still
# counts as "since attach".
SINCE_SLACK_NS = 100_000_000

ConnectionKey = tuple[int, str, int, str, str, int, int]


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


_KEY_FIELDS = ("ifindex", "direction", "proto", "src_ip", "dst_ip", "src_port", "dst_port")
_STATIC_FIELDS = ("ifname", "family", "container_name")  # per connection, outside the key
_NO_TIME = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # first_seen, last_seen of a fresh slot
_ADDRESS_BYTES = 48  # the longest address text (45), padded to whole uint64 words
_KEY_WORDS = 2 + 2 * _ADDRESS_BYTES // 8  # uint64 words of a packed key
_MIX = np.uint64(0x9E3779B97F4A7C15)  # an odd constant for the key hash (Fibonacci hashing)


def _packed_keys(batch: FlowBatch) -> np.ndarray:
    """The records' keys as rows of ``_KEY_WORDS`` uint64 words, equal iff the keys are:
    (ifindex, ports), (direction, protocol), then each address's text, NUL-padded."""
    c = batch.columns
    ports = np.asarray(c.src_port, dtype=np.uint64) << np.uint64(16) | np.asarray(c.dst_port, dtype=np.uint64)
    inner = (np.asarray(c.direction, dtype=object) == DIRECTIONS[0]).astype(np.uint64) << np.uint64(8)
    words = [(np.asarray(c.ifindex, dtype=np.uint64) << np.uint64(32) | ports)[:, None],
             (inner | np.asarray(c.proto, dtype=np.uint64))[:, None]]
    for texts in (c.src_ip, c.dst_ip):
        encoded = np.asarray(texts, dtype=f"S{_ADDRESS_BYTES}")
        words.append(encoded.view(np.uint64).reshape(len(texts), _ADDRESS_BYTES // 8))
    return np.hstack(words)


def _hashes(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash per packed key (multiply-xorshift over its words; wraps by design)."""
    h = np.zeros(len(words), dtype=np.uint64)
    for column in words.T:
        h = (h ^ column) * _MIX
        h ^= h >> np.uint64(29)
    return h


class _Interval:
    """The records of one batch as columns: packed keys, their hashes, counters.

    ``rows`` are the records' positions in ``batch`` (after ``take``, a subset): key tuples
    and the fields outside the key are read from the batch only for the records that need them.
    """

    __slots__ = ("batch", "rows", "words", "hashes", "ifindex", "packets", "bytes",
                 "first_seen", "last_seen")

    def __init__(self, batch: FlowBatch, rows: np.ndarray, columns: tuple[np.ndarray, ...]) -> None:
        self.batch = batch
        self.rows = rows
        (self.words, self.hashes, self.ifindex, self.packets, self.bytes, self.first_seen,
         self.last_seen) = columns

    @classmethod
    def of(cls, batch: FlowBatch | None) -> _Interval:
        if batch is None:
            batch = FlowBatch.empty(Envelope("", "", 0, 0, 0))
        c = batch.columns
        words = _packed_keys(batch)
        # copies (np.array), not views of the batch: a residue is subtracted in place
        return cls(batch, np.arange(len(batch)), (
            words, _hashes(words), np.array(c.ifindex, dtype=np.int64),
            np.array(c.packets, dtype=np.uint64), np.array(c.bytes, dtype=np.uint64),
            np.array(c.first_seen, dtype=np.int64), np.array(c.last_seen, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, keep: np.ndarray) -> _Interval:
        """The records where ``keep`` is True."""
        return _Interval(self.batch, self.rows[keep], tuple(column[keep] for column in (
            self.words, self.hashes, self.ifindex, self.packets, self.bytes, self.first_seen,
            self.last_seen)))

    def field(self, name: str, at: np.ndarray) -> list:
        """Field ``name`` of the records at positions ``at``, as Python values."""
        column = self.batch.column(name)
        return [column[i] for i in self.rows[at].tolist()]

    def keys(self, at: np.ndarray) -> list[ConnectionKey]:
        return list(zip(*(self.field(name, at) for name in _KEY_FIELDS)))

    def tuples(self) -> list[tuple]:
        """(key, ifname, family, container_name, packets, bytes, first_seen, last_seen) per record."""
        everything = np.arange(len(self))
        return list(zip(self.keys(everything), *(self.field(name, everything) for name in _STATIC_FIELDS),
                        self.packets.tolist(), self.bytes.tolist(), self.first_seen.tolist(),
                        self.last_seen.tolist()))


class _Columns:
    """The table's fields, one numpy array per field, indexed by slot."""

    DTYPES = {"id": np.int64, "ifindex": np.int64, "packets": np.uint64, "bytes": np.uint64,
              "first_seen": np.int64, "last_seen": np.int64, "family": np.int64, "hash": np.uint64,
              "ifname": object, "container_name": object}

    def __init__(self) -> None:
        for name, dtype in self.DTYPES.items():
            setattr(self, name, np.zeros(0, dtype=dtype))
        self.words = np.zeros((0, _KEY_WORDS), dtype=np.uint64)

    def append(self, fresh: dict[str, Any], words: np.ndarray) -> None:
        count = len(words)
        for name, dtype in self.DTYPES.items():
            value = np.asarray(fresh[name], dtype=dtype)
            setattr(self, name, np.concatenate([getattr(self, name), np.broadcast_to(value, count)]))
        self.words = np.concatenate([self.words, words])

    def keep(self, mask: np.ndarray) -> None:
        for name in (*self.DTYPES, "words"):
            setattr(self, name, getattr(self, name)[mask])


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
        self._index: dict[int, int] = {}  # key hash -> the first slot with that hash
        self._spill: dict[bytes, int] = {}  # packed key -> slot, for the others (collisions)
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
        slots = np.fromiter(map(self._index.get, interval.hashes.tolist(), repeat(-1)),
                            dtype=np.int64, count=len(interval))
        hit = np.flatnonzero(slots >= 0)
        same = (self._columns.words[slots[hit]] == interval.words[hit]).all(axis=1)
        for i in hit[~same].tolist():  # another key with the same hash
            slots[i] = self._spill.get(interval.words[i].tobytes(), -1)
        return slots

    def _add_slots(self, interval: _Interval, new: np.ndarray) -> np.ndarray:
        """Slots for the records at ``new`` (not tracked), made in the order of their first
        record, which gives the fields outside the key."""
        words = interval.words[new]
        distinct, first, inverse = np.unique(interval.hashes[new], return_index=True, return_inverse=True)
        if not (words == words[first][inverse]).all():  # two new keys with one hash
            _, first, inverse = np.unique(words, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in the order of their first record
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        at = new[first[order]]
        base = len(self._keys)
        keys = interval.keys(at)
        fresh = dict(zip(_STATIC_FIELDS, (interval.field(name, at) for name in _STATIC_FIELDS)))
        fresh.update(id=self._new_ids(keys), ifindex=interval.ifindex[at], hash=interval.hashes[at],
                     packets=0, bytes=0, first_seen=_NO_TIME[0], last_seen=_NO_TIME[1])
        self._columns.append(fresh, interval.words[at])
        self._keys.extend(keys)
        self._register(np.arange(base, base + len(keys)))
        return base + rank[inverse.ravel()]

    def _register(self, slots: np.ndarray) -> None:
        """Make ``slots`` findable: by hash, or by packed key if their hash is taken."""
        words = self._columns.words
        for slot, h in zip(slots.tolist(), self._columns.hash[slots].tolist()):
            if self._index.setdefault(h, slot) != slot:
                self._spill[words[slot].tobytes()] = slot

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
        self._index, self._spill = {}, {}
        self._register(np.arange(len(self._keys)))

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

    def overflow_view(self, ifindexes: Any = None) -> list[OverflowTotal]:
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
            residue_start=live.envelope.interval_start if len(mine) else None,
            residue=dict(zip(mine.keys(everything), zip(mine.packets.tolist(), mine.bytes.tolist()))),
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

    def view(self, live: FlowBatch | None = None, ifindexes: Any = None,
             since_ns: dict[int, int] | None = None) -> list[ConnectionTotal]:
        """Totals plus the ``live`` interval, for ``ifindexes`` (all if None), by id.

        ``since_ns`` maps an ifindex to its attach time: connections last seen before
        it (less ``SINCE_SLACK_NS``) belong to an earlier attachment and are left out; a
        safety net for detaches that did not ``forget``.
        """
        slots = self._slots_on(ifindexes)
        # by slot; a connection seen live only, by its key
        merged: dict[int | ConnectionKey, ConnectionTotal] = dict(zip(slots.tolist(), self._snapshots(slots)))
        if live:
            self._add_live(merged, live, ifindexes)
        totals = merged.values()
        if since_ns:
            totals = [t for t in totals if t.last_seen >= since_ns.get(t.ifindex, 0) - SINCE_SLACK_NS]
        return sorted(totals, key=lambda t: t.id)

    def _slots_on(self, ifindexes: Any) -> np.ndarray:
        if ifindexes is None:
            return np.arange(len(self))
        return np.flatnonzero(np.isin(self._columns.ifindex, np.fromiter(ifindexes, dtype=np.int64)))

    def _snapshots(self, slots: np.ndarray) -> list[ConnectionTotal]:
        """A ``ConnectionTotal`` per slot of ``slots``, in that order."""
        c = self._columns
        fields = [getattr(c, name)[slots].tolist() for name in (
            "id", "ifname", "family", "packets", "bytes", "first_seen", "last_seen", "container_name")]
        return [ConnectionTotal(id, key[0], ifname, key[1], family, *key[2:], packets, nbytes,
                                first, last, container)
                for key, id, ifname, family, packets, nbytes, first, last, container
                in zip([self._keys[s] for s in slots.tolist()], *fields)]

    def _add_live(self, merged: dict, live: FlowBatch, ifindexes: Any) -> None:
        """Add the records of the live interval to the ``merged`` snapshots."""
        interval = _Interval.of(live)
        if self._forgotten:
            interval = self._settle_forgotten(live.envelope.interval_start, live.envelope.interval_end,
                                              interval, consume=False)
        for slot, row in zip(self._find(interval).tolist(), interval.tuples()):
            if ifindexes is None or row[0][0] in ifindexes:
                self._add_live_record(merged, slot, row)

    def _add_live_record(self, merged: dict, slot: int, row: tuple) -> None:
        key, ifname, family, container, packets, nbytes, first, last = row
        at = key if slot < 0 else slot
        total = merged.get(at)
        if total is None:
            if slot >= 0:
                total = merged[at] = self._snapshots(np.array([slot]))[0]
            else:  # seen live only; keep the id it will be published with
                id = self._pending_ids.get(key)
                if id is None:
                    id = self._pending_ids[key] = self._next_id
                    self._next_id += 1
                merged[at] = ConnectionTotal(id, key[0], ifname, key[1], family, *key[2:],
                                             packets, nbytes, first, last, container)
                return
        total.packets += packets
        total.bytes += nbytes
        total.first_seen = min(total.first_seen, first)
        total.last_seen = max(total.last_seen, last)
        total.container_name = container or total.container_name


def _subtract_residue(interval: _Interval, mine: np.ndarray,
                      residue: dict[ConnectionKey, tuple[int, int]], keep: np.ndarray) -> None:
    """Take a forgotten device's pre-detach counts off its records at ``mine`` (in place);
    a record that has nothing left is dropped from ``keep``."""
    for i, key in zip(mine.tolist(), interval.keys(mine)):
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


async def current_view(totals: ConnectionTotals, live_records: LiveRecords,
                       ifindexes: Any = None, since_ns: dict[int, int] | None = None,
                       ) -> list[ConnectionTotal]:
    """Published totals plus the current interval, read so that no interval counts twice.

    A live read can race a poll: it may show an interval the listener has already added
    (read again) or the one after an interval the listener has not yet seen (wait a
    moment and read again). After ``VIEW_ATTEMPTS`` the totals alone are served.
    """
    for _ in range(VIEW_ATTEMPTS):
        live = await live_records()
        if totals.is_current(live):
            return totals.view(live, ifindexes, since_ns)
        await asyncio.sleep(VIEW_RETRY_SECONDS)
    return totals.view(None, ifindexes, since_ns)
