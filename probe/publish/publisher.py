"""The probe's publisher: intervals in, chunked JetStream messages out, through an outbox.

``submit()`` splits one interval's batch into chunks that fit the server's
``max_payload``, encodes each (schema 2, see contract/wire.py) and appends it to the ``Outbox``
with the message id ``<host>/<boot_id>/<interval_seq>/<chunk>``. ``drain_forever`` sends
the oldest messages, up to ``max_in_flight`` at a time, and removes a message only once
its PubAck arrived. After a timeout or a lost connection it waits until every message of
the window is answered or timed out, then resends from the oldest unacknowledged one
with the same message id: the server drops the copies it already stored (duplicate
window), and the stream keeps the probe's order.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from ..contract.errors import TransportError
from ..contract.events import Event, OutboxOverflow, event_body
from ..contract.flow_batch import FlowBatch
from ..contract.messaging import (
    NatsOptions,
    StreamSettings,
    connect,
    ensure_stream,
    events_subject,
    flow_stream_config,
    flows_subject,
    message_id,
)
from ..contract.record import Envelope
from ..contract.wire import encode_chunk, encode_flows
from ..runtime.backoff import Backoff
from .outbox import Outbox, OutboxMessage

log = logging.getLogger(__name__)

_SAMPLE = 512  # records sized to estimate a chunk's length before encoding it
_MARGIN = 1.05  # the estimate's headroom: a chunk over the limit is split, which costs a re-encode


# -- chunking: a pure function -------------------------------------------------------------


def encode_interval(batch: FlowBatch, max_bytes: int) -> list[tuple[Envelope, bytes]]:
    """Encode one interval as chunks of at most ``max_bytes`` each, in record order.

    The records per chunk come from the encoded size of an even sample of records; each
    chunk's columns are encoded once, and a chunk that comes out too large is halved
    before any envelope is written (the same arrays always give the same chunks). Only
    chunk 0 carries the overflow counts, which belong to the interval.
    """
    parts = _fitting_parts(batch, max_bytes, _even_bounds(batch, max_bytes))
    count = len(parts)
    envelope = batch.envelope
    return [_assemble(envelope, part, flows, index, count) for index, (part, flows) in enumerate(parts)]


def _even_bounds(batch: FlowBatch, max_bytes: int) -> list[tuple[int, int]]:
    total = len(batch)
    if not total:
        return [(0, 0)]
    step = max(1, total // _SAMPLE)
    sample = batch.columns_at(range(0, total, step))
    per_record = len(encode_flows(sample)) * _MARGIN / len(sample.ifindex) + 1
    budget = max_bytes - _envelope_bytes(batch.envelope, ()) - _devices_bytes(batch)
    per_chunk = max(1, int(budget // per_record))
    count = math.ceil(total / per_chunk)
    per_chunk = math.ceil(total / count)  # spread evenly
    return [(start, min(start + per_chunk, total)) for start in range(0, total, per_chunk)]


def _fitting_parts(batch: FlowBatch, max_bytes: int,
                   bounds: list[tuple[int, int]]) -> list[tuple[FlowBatch, msgspec.Raw]]:
    """Each bound's slice and its encoded columns; slices too large for a message are halved."""
    parts = []
    pending = list(reversed(bounds))
    while pending:
        start, stop = pending.pop()
        part = batch.slice(start, stop)
        flows = encode_flows(part.columns)
        size = len(flows) + _envelope_bytes(part.envelope, part.devices)
        if size > max_bytes and stop - start > 1:
            middle = (start + stop) // 2
            pending += [(middle, stop), (start, middle)]
            continue
        parts.append((part, flows))
    return parts


def _assemble(envelope: Envelope, part: FlowBatch, flows: msgspec.Raw, index: int,
              count: int) -> tuple[Envelope, bytes]:
    offset = part.envelope.record_offset  # set by slice()
    chunk = replace(envelope, chunk=index, chunks=count, record_offset=offset,
                    overflow=envelope.overflow if index == 0 else (), drops=envelope.drops if index == 0 else ())
    return chunk, encode_chunk(chunk, part.devices, flows)


def _envelope_bytes(envelope: Envelope, devices) -> int:
    """An upper bound of a chunk's length without its columns."""
    widest = 10**15
    wide = replace(envelope, chunk=widest, chunks=widest, record_offset=widest)
    return len(encode_chunk(wide, devices, msgspec.Raw(b"{}"))) + 16


def _devices_bytes(batch: FlowBatch) -> int:
    """The devices of the whole interval: a bound for any chunk's."""
    return len(msgspec.json.encode(batch.devices))


def payload_limit(max_payload: int) -> int:
    """Room for a message's JSON within the server's ``max_payload``, leaving headroom for headers."""
    return max_payload - max(1024, max_payload // 32)


# -- the publisher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublisherSettings:
    host: str = field(default_factory=socket.gethostname)  # for events; flows use envelope.host
    state_dir: str | os.PathLike | None = None  # outbox spool; None keeps it in memory only
    memory_cap: int = 64 << 20
    disk_cap: int = 1 << 30
    max_in_flight: int = 64
    ack_timeout: float = 5.0
    retry_min: float = 0.1
    retry_max: float = 5.0
    stream: StreamSettings = StreamSettings()


@dataclass(frozen=True)
class PublisherStats:
    published_messages: int
    published_records: int
    duplicates: int  # PubAcks that said the server had the message already
    retries: int  # messages sent again after a timeout or a lost connection
    rejected: int  # messages the server refused for good (dropped, logged)
    dropped_messages: int  # outbox overflow
    dropped_records: int
    outbox_depth: int
    outbox_bytes: int
    connected: bool = False  # to NATS, now
    reconnects: int = 0  # times the connection came back (nats-py's count)


class FlowPublisher:
    """Publishes flow messages to JetStream; ``async with FlowPublisher(options) as p``."""

    def __init__(self, nats_options: NatsOptions, settings: PublisherSettings | None = None) -> None:
        self.options = nats_options
        self.settings = settings or PublisherSettings()
        self.outbox = Outbox(self.settings.state_dir, memory_cap=self.settings.memory_cap,
                             disk_cap=self.settings.disk_cap)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._counts = dict(published_messages=0, published_records=0, duplicates=0, retries=0, rejected=0)
        self._reported_drops = 0

    async def __aenter__(self) -> FlowPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, make sure the stream exists, and start draining the outbox."""
        self._nc = await connect(self.options, disconnected_cb=self._on_disconnect,
                                 reconnected_cb=self._on_reconnect)
        self._js = js = self._nc.jetstream(timeout=self.options.request_timeout)
        try:
            await ensure_stream(js, flow_stream_config(self.settings.stream))
        except TransportError:
            await self._nc.close()
            raise
        self._update_empty()
        self._task = asyncio.create_task(self.drain_forever(), name="connstats-publisher")

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Send what can be sent within ``flush_timeout``, keep the rest in the spool, disconnect."""
        if self._task is not None:
            if self._client.is_connected:  # else waiting is pointless: the spool keeps the rest
                await self.flush(flush_timeout)
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.outbox.close()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- input -----------------------------------------------------------------------------

    async def submit(self, batch: FlowBatch) -> int:
        """Chunk, encode and queue one interval's batch (in the caller's order); return the chunk count."""
        envelope = batch.envelope
        async with self._submit_lock:
            limit = payload_limit(self._max_payload())
            chunks = await asyncio.to_thread(encode_interval, batch, limit)
            subject = flows_subject(envelope.host)
            for part, payload in chunks:
                msg_id = message_id(part.host, part.boot_id, part.interval_seq, part.chunk)
                self.outbox.put(msg_id, subject, payload, _records_in(part, chunks, len(batch)))
            self._empty.clear()
            self._wake.set()
            return len(chunks)

    async def publish_event(self, event: Event, timeout: float = 2.0) -> bool:
        """Best effort: publish an event (contract/events.py) now; False if it failed."""
        body = {"host": self.settings.host, "time_ns": time.time_ns(), **event_body(event)}
        if self._nc is None or not self._nc.is_connected:
            log.warning("event %s not published: NATS is not connected; it is not retried", body["event"])
            return False
        try:
            await self._jetstream.publish(events_subject(self.settings.host), msgspec.json.encode(body), timeout=timeout)
            return True
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            log.warning("event %s not published: %r; it is not retried", body["event"], exc)
            return False

    async def make_durable(self, ack_timeout: float) -> None:
        """Return once everything submitted is stored: acknowledged by JetStream within
        ``ack_timeout`` seconds, or else spooled to disk (fsynced) to be sent later.

        The probe empties an interval's kernel buffer only after this, so a crash of the
        probe at any moment loses no count (see kernel/poller.py).
        """
        if await self.flush(ack_timeout):
            return
        if not self.outbox.persist():
            log.warning("%d messages are not acknowledged and there is no spool directory; "
                        "a crash now would lose them", len(self.outbox))

    async def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty; False if it was not within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(
            **self._counts, dropped_messages=self.outbox.dropped_messages,
            dropped_records=self.outbox.dropped_records, outbox_depth=len(self.outbox),
            outbox_bytes=self.outbox.depth_bytes,
            connected=self._nc is not None and self._nc.is_connected,
            reconnects=self._nc.stats["reconnects"] if self._nc is not None else 0,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def drain_forever(self) -> None:
        """Send the outbox in order, forever; never raises on NATS trouble."""
        backoff = Backoff(first=self.settings.retry_min, ceiling=self.settings.retry_max)
        while True:
            if not self.outbox:
                self._update_empty()
                await self._report_drops()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._wait_connected()
            if await self._send_oldest():
                backoff.reset()
                await self._report_drops()
            else:
                await asyncio.sleep(backoff.next())
            self._update_empty()

    async def _send_oldest(self) -> bool:
        try:
            return await self.send_window(self.outbox.peek(self.settings.max_in_flight))
        except (OSError, ValueError, KeyError) as exc:  # an unreadable spool file, a bug: keep going
            log.exception("sending the outbox failed: %r; retrying", exc)
            return False

    async def send_window(self, window: list[OutboxMessage]) -> bool:
        """Send ``window``, wait for every answer, drop the acknowledged prefix; True if all of it."""
        pending = await self._send_all(window)
        answers = await asyncio.gather(*(self._await_ack(f) for f in pending), return_exceptions=True)
        done = 0
        for message, answer in zip(window, answers, strict=True):
            if not self._settle(message, answer):
                break
            done += 1
        if done:
            self.outbox.remove_through(window[done - 1].seq)
        self._counts["retries"] += len(pending) - done
        return done == len(window)

    async def _send_all(self, window: list[OutboxMessage]) -> list[asyncio.Future]:
        """Start publishing ``window`` in order; stop at the first message that cannot be sent now."""
        pending = []
        for message in window:
            if not self._client.is_connected:
                break
            try:
                future = await self._jetstream.publish_async(
                    message.subject, message.payload, headers={Header.MSG_ID: message.msg_id})
            except (nats.errors.Error, OSError) as exc:
                if not _is_permanent(exc):
                    log.debug("publish of %s failed: %r", message.msg_id, exc)
                    break
                future = asyncio.get_running_loop().create_future()
                future.set_exception(exc)  # settled as refused, so it cannot block the outbox
            pending.append(future)
        return pending

    async def _await_ack(self, future: asyncio.Future) -> PubAck:
        return await asyncio.wait_for(future, self.settings.ack_timeout)

    def _settle(self, message: OutboxMessage, answer: Any) -> bool:
        """Account for one answer; True if the message is done with (stored or refused for good)."""
        if isinstance(answer, PubAck):
            self._counts["published_messages"] += 1
            self._counts["published_records"] += message.records
            self._counts["duplicates"] += bool(answer.duplicate)
            return True
        if _is_permanent(answer):
            self._counts["rejected"] += 1
            log.error("JetStream refused %s for good (%s); dropped it, check the stream limits",
                      message.msg_id, answer)
            return True
        return False

    async def _report_drops(self) -> None:
        dropped = self.outbox.dropped_messages
        if dropped == self._reported_drops or not (self._nc and self._nc.is_connected):
            return
        log.warning("outbox overflowed during the outage: %d messages (%d records) dropped in total",
                    dropped, self.outbox.dropped_records)
        event = OutboxOverflow(dropped_messages=dropped, dropped_records=self.outbox.dropped_records,
                               dropped_since_last_report=dropped - self._reported_drops)
        if await self.publish_event(event):
            self._reported_drops = dropped

    # -- connection state ---------------------------------------------------------------------

    @property
    def _client(self) -> Client:
        if self._nc is None:
            raise RuntimeError("the publisher is not started (start, or async with)")
        return self._nc

    @property
    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the publisher is not started (start, or async with)")
        return self._js

    async def _wait_connected(self) -> None:
        while not self._client.is_connected:
            await asyncio.sleep(0.05)

    async def _on_disconnect(self) -> None:
        if self._task is None:  # closing
            return
        log.warning("NATS connection lost; %d messages wait in the outbox", len(self.outbox))

    async def _on_reconnect(self) -> None:
        url = self._client.connected_url
        where = f"{url.hostname}:{url.port}" if url else "?"
        log.info("NATS connection back (%s); sending %d messages from the outbox", where, len(self.outbox))
        self._wake.set()

    def _max_payload(self) -> int:
        return self._nc.max_payload if self._nc is not None else 1 << 20

    def _update_empty(self) -> None:
        if self.outbox:
            self._empty.clear()
        else:
            self._empty.set()


def _records_in(part: Envelope, chunks: list[tuple[Envelope, bytes]], total: int) -> int:
    following = part.chunk + 1
    end = chunks[following][0].record_offset if following < len(chunks) else total
    return end - part.record_offset


def _is_permanent(error: Any) -> bool:
    """A refusal that resending cannot fix (too large, no such stream); timeouts and 503s are not."""
    if isinstance(error, nats.errors.MaxPayloadError):
        return True
    if isinstance(error, nats.js.errors.ServiceUnavailableError):
        return False
    return isinstance(error, nats.js.errors.APIError) and error.code is not None and 400 <= error.code < 500
