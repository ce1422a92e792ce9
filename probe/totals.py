"""Per-connection counters since attach: what the HTTP API serves.

    every interval:  totals(batch)                    one dict lookup per record, from the columns
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

Memory is bounded: beyond ``max_entries`` the least recently seen connections (smallest
``last_seen``) are evicted after the interval that overflowed, and counted in
``evicted``. Eviction picks the victims in one pass over the table (``heapq.nsmallest``),
so only intervals that overflow pay for it: ~25 ms per 50k entries.

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
import heapq
import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable

from .record import Envelope, FlowRecord
from .wire import FlowBatch

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


# A connection of a batch as a tuple zipped from its columns: the key, then the rest.
_ROW = ("ifindex", "direction", "proto", "src_ip", "dst_ip", "src_port", "dst_port",
        "ifname", "family", "container_name", "packets", "bytes", "first_seen", "last_seen")
_KEY = slice(0, 7)
_IFNAME, _FAMILY, _CONTAINER, _PACKETS, _BYTES, _FIRST, _LAST = range(7, 14)


class _Entry:
    """The mutable counters behind one key; static fields not in the key live here too."""

    __slots__ = ("id", "ifname", "family", "container_name", "packets", "bytes",
                 "first_seen", "last_seen")

    def __init__(self, id: int, row: tuple) -> None:
        self.id = id
        (self.ifname, self.family, self.container_name, self.packets, self.bytes,
         self.first_seen, self.last_seen) = row[7:]


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
        self._table: dict[ConnectionKey, _Entry] = {}
        self._ids = itertools.count(1)
        self._pending_ids: dict[ConnectionKey, int] = {}  # seen live, not yet published
        self._forgotten: dict[int, _Forgotten] = {}
        self._overflow: dict[tuple[int, str], OverflowTotal] = {}

    def __len__(self) -> int:
        return len(self._table)

    def __call__(self, batch: FlowBatch) -> None:
        """Add one published interval (the daemon calls this; it never raises)."""
        envelope = batch.envelope
        self._add_overflow(envelope)
        rows = batch.rows(_ROW)
        if self._forgotten:
            rows = self._settle_forgotten(envelope.interval_start, envelope.interval_end,
                                          rows, consume=True)
        table = self._table
        for row in rows:
            key = row[:7]
            entry = table.get(key)
            if entry is None:
                table[key] = _Entry(self._pending_ids.pop(key, None) or next(self._ids), row)
                continue
            entry.packets += row[_PACKETS]
            entry.bytes += row[_BYTES]
            if row[_FIRST] < entry.first_seen:
                entry.first_seen = row[_FIRST]
            if row[_LAST] > entry.last_seen:
                entry.last_seen = row[_LAST]
        self.intervals += 1
        self.ingested_until = envelope.interval_end
        if len(table) > self.max_entries:
            self._evict(len(table) - self.max_entries)
        if len(self._pending_ids) > self.max_entries:
            self._pending_ids.clear()  # ids of live connections that never got published

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

    def _evict(self, count: int) -> None:
        table = self._table
        last_seen = lambda k: table[k].last_seen  # noqa: E731
        # nsmallest is O(n log count): the better choice unless most entries go.
        victims = (heapq.nsmallest(count, table, key=last_seen) if count * 4 < len(table)
                   else sorted(table, key=last_seen)[:count])
        for key in victims:
            del table[key]
        self.evicted += count

    # -- forgetting a device ----------------------------------------------------------------

    def forget(self, ifindex: int, live: FlowBatch | None = None,
               until_ns: int | None = None) -> int:
        """Drop a detached device's totals; return how many connections were dropped.

        ``live`` is what ``daemon.live_records()`` returned after the detach, and
        ``until_ns`` the wall clock after that read: the device's counts in
        intervals that ended by then, and its residue in the live interval, are ignored.
        """
        doomed = [key for key in self._table if key[0] == ifindex]
        for key in doomed:
            del self._table[key]
        for key in [key for key in self._overflow if key[0] == ifindex]:
            del self._overflow[key]
        mine = [row for row in (live.rows(_ROW) if live else ()) if row[0] == ifindex]
        self._forgotten[ifindex] = _Forgotten(
            until_ns=time.time_ns() if until_ns is None else until_ns,
            residue_start=live.envelope.interval_start if mine else None,
            residue={row[:7]: (row[_PACKETS], row[_BYTES]) for row in mine},
        )
        return len(doomed)

    def _settle_forgotten(self, start: int, end: int, rows: Iterable[tuple],
                          consume: bool) -> list[tuple]:
        """Rows of one interval without what forgotten devices counted before detach."""
        forgotten = self._forgotten
        kept = []
        for row in rows:
            gone = forgotten.get(row[0])
            if gone is not None:
                if end <= gone.until_ns:
                    continue
                if start == gone.residue_start:
                    row = _minus(row, gone.residue.get(row[:7]))
                    if row is None:
                        continue
            kept.append(row)
        if consume:
            for ifindex in [i for i, gone in forgotten.items() if end > gone.until_ns]:
                del forgotten[ifindex]
        return kept

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
        merged: dict[ConnectionKey, ConnectionTotal] = {}
        for key, e in self._table.items():
            if ifindexes is None or key[0] in ifindexes:
                merged[key] = _snapshot(key, e)
        rows = live.rows(_ROW) if live else ()
        if live and self._forgotten:
            rows = self._settle_forgotten(live.envelope.interval_start, live.envelope.interval_end,
                                          rows, consume=False)
        for row in rows:
            if ifindexes is None or row[0] in ifindexes:
                self._add_live(merged, row)
        totals = merged.values()
        if since_ns:
            totals = [t for t in totals if t.last_seen >= since_ns.get(t.ifindex, 0) - SINCE_SLACK_NS]
        return sorted(totals, key=lambda t: t.id)

    def _add_live(self, merged: dict[ConnectionKey, ConnectionTotal], row: tuple) -> None:
        key = row[:7]
        total = merged.get(key)
        if total is None:
            entry = self._table.get(key)
            if entry is None:  # seen live only; keep the id it will be published with
                id = self._pending_ids.get(key)
                if id is None:
                    id = self._pending_ids[key] = next(self._ids)
                merged[key] = _snapshot(key, _Entry(id, row))
                return
            total = merged[key] = _snapshot(key, entry)
        total.packets += row[_PACKETS]
        total.bytes += row[_BYTES]
        total.first_seen = min(total.first_seen, row[_FIRST])
        total.last_seen = max(total.last_seen, row[_LAST])
        total.container_name = row[_CONTAINER] or total.container_name


def _snapshot(key: ConnectionKey, e: _Entry) -> ConnectionTotal:
    ifindex, direction, proto, src_ip, dst_ip, src_port, dst_port = key
    return ConnectionTotal(e.id, ifindex, e.ifname, direction, e.family, proto, src_ip, dst_ip,
                           src_port, dst_port, e.packets, e.bytes, e.first_seen, e.last_seen,
                           e.container_name)


def _minus(row: tuple, residue: tuple[int, int] | None) -> tuple | None:
    """``row`` less what was counted before the detach; None if nothing is left."""
    if residue is None:
        return row
    packets, nbytes = residue
    if row[_PACKETS] <= packets:
        return None
    return (*row[:_PACKETS], row[_PACKETS] - packets, row[_BYTES] - nbytes, *row[_FIRST:])


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
