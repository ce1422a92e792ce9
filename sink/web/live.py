"""The Live view's feed: one ``FlowSubscription`` on ``connstats.v1.flows.>`` (each message
decoded once, in a worker thread, into numpy columns; the chunks of an interval put back
together once), and for each open page the top N connections of every interval after its
filters, picked column-wise (numpy) so that only N rows ever become Python objects or JSON.

    NATS message ─ decode_message ─ ChunkColumns (numpy) ─ all chunks of an interval in ─┐
        ┌─ page 1: per chunk filter mask, top N; the chunks' top N merged ─ one event <──┤
        └─ page 2: ...                                                                  ─┘

A chunked interval (``envelope.chunks`` > 1) is shown once all its chunks arrived; one still
missing chunks when it expires (``CHUNK_TIMEOUT``) or is pushed out (more than
``MAX_PENDING_INTERVALS`` waiting) is not shown. Messages are read only while a page is
open. A page that reads too slowly loses its oldest events, never stalls the feed.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from connstats.probe.contract import FLOWS_WILDCARD, Envelope, FlowBatch, FlowSubscription, Interval, proto_name
from connstats.probe.contract.wire import Device

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
PAGE_QUEUE = 8  # events waiting for a slow page before the oldest is dropped
FEED_QUEUE = 256  # NATS messages waiting to be decoded before new ones are dropped
_U64_MAX = np.iinfo(np.uint64).max
LIVE_QUALITY = {"rtt_avg_us": 0, "rtt_max_us": 0, "retransmits": 0, "drop_packets": 0, "drop_bytes": 0,
                "drop_reason": ""}  # a row's quality fields, each sent only when set


@dataclass(frozen=True)
class LiveFilter:
    """What one page asked for: ``None`` matches everything; ``port`` is either side."""

    host: str | None = None
    iface: str | None = None
    container: str | None = None
    proto: int | None = None
    port: int | None = None
    limit: int = 50


class ChunkColumns:
    """One decoded flow message as numpy columns, plus its devices' names per ifindex."""

    def __init__(self, batch: FlowBatch) -> None:
        c = batch.columns
        self.envelope = batch.envelope
        self.ifindex = np.asarray(c.ifindex, dtype=np.int64)
        self.proto = np.asarray(c.proto, dtype=np.int64)
        self.src_port = np.asarray(c.src_port, dtype=np.int64)
        self.dst_port = np.asarray(c.dst_port, dtype=np.int64)
        self.packets = np.asarray(c.packets, dtype=np.uint64)
        self.bytes = np.asarray(c.bytes, dtype=np.uint64)
        self.columns = c
        self.devices = {d.ifindex: d for d in batch.devices}

    def __len__(self) -> int:
        return len(self.ifindex)

    def mask(self, wanted: LiveFilter) -> np.ndarray | None:
        """Which records pass ``wanted`` (None: all of them)."""
        if wanted.host is not None and wanted.host != self.envelope.host:
            return np.zeros(len(self), dtype=bool)
        keep = None
        if wanted.iface is not None or wanted.container is not None:
            indexes = [i for i, d in self.devices.items()
                       if wanted.iface in (None, d.ifname) and wanted.container in (None, d.container_name)]
            keep = _and(keep, np.isin(self.ifindex, indexes))
        if wanted.proto is not None:
            keep = _and(keep, self.proto == wanted.proto)
        if wanted.port is not None:
            keep = _and(keep, (self.src_port == wanted.port) | (self.dst_port == wanted.port))
        return keep

    def top(self, wanted: LiveFilter) -> tuple[list[dict], tuple[int, int, int]]:
        """The ``limit`` busiest matching records as rows, and (connections, packets, bytes)
        of all matching records."""
        keep = self.mask(wanted)
        chosen = np.arange(len(self)) if keep is None else np.flatnonzero(keep)
        totals = (len(chosen), int(self.packets[chosen].sum()), int(self.bytes[chosen].sum()))
        if len(chosen) > wanted.limit:  # only the candidates are sorted
            part = np.argpartition(_U64_MAX - self.bytes[chosen], wanted.limit - 1)[:wanted.limit]
            chosen = chosen[part]
        order = np.lexsort((_U64_MAX - self.packets[chosen], _U64_MAX - self.bytes[chosen]))
        return [self.row(int(i)) for i in chosen[order]], totals

    def row(self, i: int) -> dict[str, Any]:
        c, device = self.columns, self.devices.get(int(self.ifindex[i]))
        return {"host": self.envelope.host, "ifname": device.ifname if device else "",
                "container": device.container_name if device else "", "direction": c.direction[i],
                "proto": proto_name(int(self.proto[i])), "src_ip": c.src_ip[i], "src_port": int(self.src_port[i]),
                "dst_ip": c.dst_ip[i], "dst_port": int(self.dst_port[i]),
                "packets": int(self.packets[i]), "bytes": int(self.bytes[i]),
                "verdict": self._optional(c.verdict, i, ""),  # absent: no policy
                **self._who(device, i), **self._quality(i)}

    def _who(self, device: Device | None, i: int) -> dict[str, Any]:
        """The pod and the process on each end, each only when known (a row stays small)."""
        c = self.columns
        who = {"pod": device.pod if device else "", "process": self._optional(c.process, i, ""),
               "pid": int(self._optional(c.pid, i, 0)), "peer_process": self._optional(c.peer_process, i, ""),
               "peer_pid": int(self._optional(c.peer_pid, i, 0))}
        return {name: value for name, value in who.items() if value}

    def _quality(self, i: int) -> dict[str, Any]:
        """RTT, retransmits and drops with their reason, each only when set (a message
        without the quality columns has none)."""
        c = self.columns
        quality = {name: self._optional(getattr(c, name), i, empty) for name, empty in LIVE_QUALITY.items()}
        return {name: int(value) if name != "drop_reason" else value for name, value in quality.items() if value}

    def _optional(self, column: Any, i: int, empty: Any) -> Any:
        """An optional column's value (verdict, process, ...): a message without it has none."""
        return column[i] if len(column) == len(self) else empty


def _and(left: np.ndarray | None, right: np.ndarray) -> np.ndarray:
    return right if left is None else left & right


def busiest(rows: list[dict], limit: int) -> list[dict]:
    return sorted(rows, key=lambda r: (-r["bytes"], -r["packets"]))[:limit]


class LivePage:
    """One open page: its filter and its queue of finished intervals."""

    def __init__(self, wanted: LiveFilter) -> None:
        self.wanted = wanted
        self.events: asyncio.Queue[dict | None] = asyncio.Queue(PAGE_QUEUE)
        self.dropped = 0

    def add(self, interval: Interval[ChunkColumns]) -> None:
        """Queue one interval's event: its chunks' top N after the page's filters, merged."""
        rows: list[dict] = []
        totals = [0, 0, 0]
        for chunk in interval.chunks:
            chunk_rows, chunk_totals = chunk.top(self.wanted)
            rows = busiest(rows + chunk_rows, self.wanted.limit)
            totals = [a + b for a, b in zip(totals, chunk_totals, strict=True)]
        self._queue(interval_event(interval.envelope, rows, totals))

    def close(self) -> None:
        """End the page's stream: ``None`` is its last event."""
        self._queue(None)

    def _queue(self, event: dict | None) -> None:
        if self.events.full():
            self.events.get_nowait()
            self.dropped += 1
        self.events.put_nowait(event)


def interval_event(envelope: Envelope, rows: list[dict], totals: list[int]) -> dict[str, Any]:
    """One interval's event; ``drops`` (the device drops that belong to no connection) only
    when the interval has some."""
    connections, packets, nbytes = totals
    event = {"host": envelope.host, "interval_seq": envelope.interval_seq,
             "interval_start_ms": envelope.interval_start // 1_000_000,
             "interval_end_ms": envelope.interval_end // 1_000_000,
             "connections": connections, "packets": packets, "bytes": nbytes, "rows": rows}
    if envelope.drops:
        event["drops"] = [{"ifname": d.ifname, "reason": d.reason, "packets": d.packets, "bytes": d.bytes}
                          for d in envelope.drops]
    return event


class LiveFeed:
    """The flow subscription shared by every open page; ``start()`` subscribes, ``close()`` stops."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.pages: set[LivePage] = set()
        self.flows = FlowSubscription(self._show, prepare=ChunkColumns)

    @property
    def bad_messages(self) -> int:
        """Flow messages skipped: undecodable, or their host not their subject's."""
        return self.flows.rejected

    @property
    def dropped_messages(self) -> int:
        """Flow messages dropped unread: more than ``FEED_QUEUE`` waited to be decoded."""
        return self.flows.dropped

    async def start(self) -> None:
        await self.flows.start(self.nc, FLOWS_WILDCARD, queue=FEED_QUEUE, active=lambda: bool(self.pages))

    async def close(self) -> None:
        for page in list(self.pages):
            page.close()
        await self.flows.close()

    def _show(self, interval: Interval[ChunkColumns]) -> None:
        if not interval.complete:
            return  # chunks lost: the page shows whole intervals only
        for page in list(self.pages):
            try:
                page.add(interval)
            except Exception:  # one page's trouble must not stop the others
                log.exception("live feed: a page's interval failed")
