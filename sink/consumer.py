"""The sink's consumer loop: JetStream pull consumer in, ``Store.write`` out.

Every sink process binds to the same durable pull consumer (``connstats-sink``), so the
server spreads messages over them; that is how the sink scales out. For each message:

* decoded and stored   -> ``ack`` (only after ``store.write`` returned; with a store that has
  ``write_many``, up to ``write_group`` messages in a row are stored in one transaction and
  acked after it: a crash between the commit and the acks redelivers them, and the store's
  writes are idempotent);
* ``MessageError``, a body whose ``host`` is not the subject's, or a ``StoreError`` that
  retrying cannot fix -> copy the payload to ``connstats.v1.deadletter`` with the reason
  and origin in headers, then ``term`` it;
* ``StoreFull`` (SQLITE_FULL, ENOSPC, InfluxDB 507): the store's condition, never the
  message's -> ``nak`` it and the rest of the batch and fetch nothing for a pause (0.5 s
  doubling to ``full_pause_max``) until a write succeeds again; one warning when it starts
  and one when it ends, the ``store_full`` gauge meanwhile; never a dead letter;
* ``StoreUnavailable`` or an unexpected exception -> ``nak`` that message with a delay that
  doubles per attempt (0.5 s .. 30 s) and go on with the batch. Whether the message or the
  store is at fault decides what follows:

  - the store: two failures in a row and ``store.ping()`` fails too -> ``nak`` the rest of
    the batch and fetch nothing for a delay that doubles while it lasts; a batch in which
    writes failed and none succeeded pauses fetching the same way;
  - the message: it failed ``max_attempts`` times and another message was stored after its
    first failure (so the store works) -> dead letter, and the messages behind it flow.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header

from connstats.probe.contract import (
    FLOWS_WILDCARD,
    STREAM_NAME,
    FlowBatch,
    MessageError,
    StoreError,
    StoreFull,
    StoreUnavailable,
    StreamSettings,
    TransportError,
    decode_message,
    ensure_stream,
    flow_stream_config,
    host_mismatch,
)
from connstats.probe.runtime.backoff import Backoff
from connstats.sink.jetstream import DEADLETTER_SUBJECT, DEFAULT_DURABLE, deadletter_stream_config, sink_consumer_config
from connstats.sink.store import Store

log = logging.getLogger(__name__)

DEAD_LETTER_CLASSES = ("undecodable", "wrong_subject", "store_refused", "store_failed")
REASON_HEADER = "Connstats-Reason"
REASON_CLASS_HEADER = "Connstats-Reason-Class"
SUBJECT_HEADER = "Connstats-Subject"
SEQUENCE_HEADER = "Connstats-Stream-Seq"
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class ConsumerSettings:
    durable: str = DEFAULT_DURABLE
    batch: int = 64  # messages per fetch, at most
    batch_bytes: int = 16 << 20  # payload per fetch, about: fewer messages when they are large (below)
    fetch_timeout: float = 1.0  # seconds a fetch waits for the first message
    ack_wait: float = 30.0  # the server redelivers a message not acked within this
    max_ack_pending: int = 1024
    backoff_min: float = 0.5  # after the first StoreUnavailable
    backoff_max: float = 30.0
    max_attempts: int = 3  # failed writes of one message, while others are stored, before it is dead-lettered
    full_pause_max: float = 5.0  # the longest pause while the store is full (someone may free space at any time)
    write_group: int = 8  # messages per store transaction, for a store with write_many (SQLite); each is held decoded


@dataclass(frozen=True)
class ConsumerStats:
    stored_messages: int
    stored_records: int
    dead_lettered: int
    store_errors: int  # write attempts that raised
    naks: int  # messages handed back for later (store unavailable, dead letter not publishable)
    store_full_pauses: int = 0  # pauses because the store was full (one per failed write)


class FlowConsumer:
    """Consumes flow messages into a ``Store``; ``start()``, ``consume_forever(stop)``, ``close()``."""

    def __init__(self, nc: Client, store: Store, settings: ConsumerSettings | None = None,
                 stream: StreamSettings | None = None, on_write: Callable[[float], None] | None = None) -> None:
        self.nc = nc
        self.store = store
        self.settings = settings or ConsumerSettings()
        self._stream = stream or StreamSettings()
        self._js = nc.jetstream()
        self._sub: JetStreamContext.PullSubscription | None = None  # bound by start()
        self._backoff = Backoff(first=self.settings.backoff_min, ceiling=self.settings.backoff_max)
        self._last_dead_letter_warning = -1e9
        self._counts = dict(stored_messages=0, stored_records=0, dead_lettered=0, store_errors=0, naks=0,
                            store_full_pauses=0)
        self.dead_letters = dict.fromkeys(DEAD_LETTER_CLASSES, 0)  # by reason class
        self._on_write = on_write  # seconds of each successful write (the self-metrics)
        # Stream sequence -> [failed writes, stored messages when it first failed]
        self._failures: dict[int, list[int]] = {}
        self._failed_in_row = 0
        self._full_backoff = Backoff(first=self.settings.backoff_min,
                                     ceiling=min(self.settings.backoff_max, self.settings.full_pause_max))
        self.full_since: float | None = None  # monotonic time the store was first found full, while it is
        # messages the next fetch asks for: ``batch``, or as many of the last fetch's largest
        # as fit ``batch_bytes`` (a full map's messages are ~1 MiB each: a fetch of 64 and one
        # fetched ahead held 128 MiB while the sink was behind); the first: as many of the
        # largest message the server takes
        self.fetch_size = self._fitting(getattr(nc, "max_payload", 0) or 1 << 20)

    async def __aenter__(self) -> FlowConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Make sure both streams and the durable consumer exist, and bind to it."""
        await ensure_stream(self._js, flow_stream_config(self._stream))
        await ensure_stream(self._js, deadletter_stream_config(self._stream))
        config = sink_consumer_config(self.settings.durable, ack_wait=self.settings.ack_wait,
                                      max_ack_pending=self.settings.max_ack_pending)
        try:
            self._sub = await self._js.pull_subscribe(FLOWS_WILDCARD, durable=self.settings.durable,
                                                      stream=STREAM_NAME, config=config)
        except (nats.errors.Error, OSError) as exc:
            raise TransportError(f"cannot bind to consumer {self.settings.durable} on {STREAM_NAME}: {exc!r}; "
                                 "check JetStream permissions and the consumer's settings") from exc

    async def close(self) -> None:
        """Stop receiving; unacked messages go to another sink after ``ack_wait``."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except (nats.errors.Error, OSError):
                pass
            self._sub = None

    def _bound(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            raise RuntimeError("FlowConsumer fetches between start() and close() (async with) only")
        return self._sub

    @property
    def stats(self) -> ConsumerStats:
        return ConsumerStats(**self._counts)

    # -- the loop -----------------------------------------------------------------------

    async def consume_forever(self, stop: asyncio.Event) -> None:
        """Fetch and handle batches until ``stop`` is set; the batch in hand is finished.

        After a full batch (a backlog) the next one is fetched while this one is stored; a
        batch fetched ahead during a pause, or when ``stop`` came, is handed back (nak)."""
        ahead: asyncio.Future | None = None
        while not stop.is_set():
            messages, asked = await (ahead or self._fetch_counted())
            ahead = asyncio.ensure_future(self._fetch_counted()) if len(messages) == asked else None
            pause = await self.handle_batch(messages)
            if pause:
                if ahead is not None:
                    await self._nak_all((await ahead)[0], pause)
                    ahead = None
                await _sleep_unless(stop, pause)
        if ahead is not None:
            await self._nak_all((await ahead)[0], 0)

    async def _fetch_counted(self) -> tuple[list[Msg], int]:
        asked = self.fetch_size
        return await self.fetch_batch(), asked

    async def fetch_batch(self) -> list[Msg]:
        """Up to ``fetch_size`` messages; the next ``fetch_size`` from the largest of them."""
        try:
            messages = await self._bound().fetch(self.fetch_size, timeout=self.settings.fetch_timeout)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except (nats.errors.Error, OSError) as exc:  # reconnecting, server restarting
            log.debug("fetch failed: %r", exc)
            await asyncio.sleep(self.settings.fetch_timeout)
            return []
        if messages:
            self.fetch_size = self._fitting(max(len(msg.data) for msg in messages))
        return messages

    def _fitting(self, message_bytes: int) -> int:
        return max(1, min(self.settings.batch, self.settings.batch_bytes // max(message_bytes, 1)))

    async def handle_batch(self, messages: list[Msg]) -> float:
        """Handle messages in order; return how long to pause fetching (0 if none).

        With a store that has ``write_many``, runs of up to ``write_group`` storable messages
        go in one transaction and are acked after it; a run that fails is handled again one
        message at a time (below), and so is the rest of the batch."""
        stored, failed = self._counts["stored_messages"], self._counts["store_errors"]
        decoded = _Lookahead(messages)
        grouping = callable(getattr(self.store, "write_many", None)) and self.settings.write_group > 1
        index = 0
        while index < len(messages):
            group = self._storable_run(messages, decoded, index) if grouping else []
            if len(group) > 1:
                if await self._write_group(messages[index:index + len(group)], group,
                                           functools.partial(decoded.prepare, index + len(group))):
                    decoded.forget(index, len(group))
                    index += len(group)
                    continue
                grouping = False
            delay = await self.handle(messages[index], decoded.take(index),
                                      functools.partial(decoded.prepare, index + 1))
            if delay:  # the store itself fails: hand back the rest too
                await self._nak_all(messages[index + 1:], delay)
                return delay
            index += 1
        if self._counts["store_errors"] > failed and self._counts["stored_messages"] == stored:
            return self._backoff.next()  # writes failed and none succeeded: do not fetch again at once
        return 0.0

    async def handle(self, msg: Msg, decoded: FlowBatch | MessageError | None = None,
                     meanwhile: Callable[[], None] | None = None) -> float:
        """Store or dead-letter one message, or hand it back; return a pause if the store fails.

        ``decoded`` is the message already decoded (or why it cannot be); ``meanwhile`` runs
        while the store writes in its thread (decoding the next message)."""
        batch = _decode(msg) if decoded is None else decoded
        if isinstance(batch, MessageError):
            return await self._dead_letter(msg, f"undecodable: {batch}", "undecodable")
        wrong_host = host_mismatch(msg.subject, batch.envelope.host)
        if wrong_host:
            return await self._dead_letter(msg, wrong_host, "wrong_subject")
        try:
            started = time.perf_counter()
            await self._write(batch, meanwhile)
        except StoreFull as exc:
            return await self._store_full(msg, exc)
        except StoreUnavailable as exc:
            return await self._write_failed(msg, exc)
        except StoreError as exc:
            self._counts["store_errors"] += 1
            return await self._dead_letter(msg, f"store refused: {exc}", "store_refused")
        except Exception as exc:  # a store bug: no traceback per retry, see _write_failed
            return await self._write_failed(msg, exc)
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        self._stored(msg)
        await _settle(msg.ack)
        self._counts["stored_messages"] += 1
        self._counts["stored_records"] += len(batch)
        return 0.0

    async def _write(self, batch: FlowBatch, meanwhile: Callable[[], None] | None) -> None:
        await _overlapped(self.store.write(batch), meanwhile)

    def _storable_run(self, messages: list[Msg], decoded: _Lookahead, index: int) -> list[FlowBatch]:
        """The decoded messages from ``index`` on (at most ``write_group``) up to the first that
        is not to be stored (undecodable, another host's)."""
        run: list[FlowBatch] = []
        for at in range(index, min(len(messages), index + self.settings.write_group)):
            batch = decoded.peek(at)
            if isinstance(batch, MessageError) or host_mismatch(messages[at].subject, batch.envelope.host):
                break
            run.append(batch)
        return run

    async def _write_group(self, messages: list[Msg], batches: list[FlowBatch],
                           meanwhile: Callable[[], None]) -> bool:
        """Store ``batches`` in one transaction, then ack them all; False (nothing acked, nothing
        counted) if the write failed: the caller handles them one by one."""
        started = time.perf_counter()
        try:
            await _overlapped(self.store.write_many(batches), meanwhile)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - handled per message next, where each error has its rule
            log.debug("writing %d messages in one transaction failed (%s); writing them one by one",
                      len(batches), _describe(exc))
            return False
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        for msg in messages:
            self._stored(msg)
        for msg in messages:
            await _settle(msg.ack)
        self._counts["stored_messages"] += len(messages)
        self._counts["stored_records"] += sum(map(len, batches))
        return True

    def _stored(self, msg: Msg) -> None:
        if self.full_since is not None:
            log.warning("store takes writes again after %.1f s full; consuming again", time.monotonic() - self.full_since)
            self.full_since = None
            self._full_backoff.reset()
        self._backoff.reset()
        self._failed_in_row = 0
        self._failures.pop(msg.metadata.sequence.stream, None)

    async def _write_failed(self, msg: Msg, exc: Exception) -> float:
        """Retry this message later, dead-letter it, or pause: see the module docstring."""
        self._counts["store_errors"] += 1
        sequence = msg.metadata.sequence.stream
        failure = self._failures.setdefault(sequence, [0, self._counts["stored_messages"]])
        failure[0] += 1
        attempts, stored_before = failure
        reason = _describe(exc)
        log.debug("store.write failed on stream seq %s", sequence, exc_info=exc)
        if attempts >= self.settings.max_attempts and self._counts["stored_messages"] > stored_before:
            self._failures.pop(sequence, None)
            return await self._dead_letter(
                msg, f"store failed {attempts} times on this message while others were stored: {reason}",
                "store_failed")
        self._forget_old_failures()
        self._failed_in_row += 1
        if self._failed_in_row >= 2 and not await self._store_answers():
            delay = self._backoff.next()
            log.warning("store failing (%s); pausing %.1f s", reason, delay)
            await self._nak_all([msg], delay)
            return delay
        delay = self._backoff.delay(attempts)  # the same doubling rule, per message
        log.warning("store.write failed on stream seq %s (attempt %d of %d: %s); retrying it in %.1f s",
                    sequence, attempts, self.settings.max_attempts, reason, delay)
        await self._nak_all([msg], delay)
        return 0.0

    async def _store_full(self, msg: Msg, exc: StoreFull) -> float:
        """Hand the message back and pause: a full store is no message's fault (never a dead letter)."""
        self._counts["store_errors"] += 1
        self._counts["store_full_pauses"] += 1
        delay = self._full_backoff.next()
        if self.full_since is None:
            self.full_since = time.monotonic()
            log.warning("store full, consumption paused, nothing is dead-lettered (%s); retrying every %.1f s "
                        "or less until a write succeeds", _describe(exc), self._full_backoff.ceiling)
        else:
            log.debug("store still full; pausing %.1f s", delay)
        await self._nak_all([msg], delay)
        return delay

    async def _store_answers(self) -> bool:
        try:
            await self.store.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not now"
            log.debug("store.ping failed: %r", exc)
            return False
        return True

    def _forget_old_failures(self, limit: int = 10_000) -> None:
        """Keep the failure table bounded: messages another sink took are never seen again."""
        while len(self._failures) > limit:
            del self._failures[next(iter(self._failures))]

    # -- dead letters and naks -------------------------------------------------------------

    async def _dead_letter(self, msg: Msg, reason: str, reason_class: str) -> float:
        """Copy the payload to the dead-letter subject, then ``term`` the original."""
        sequence = str(msg.metadata.sequence.stream)
        headers = dead_letter_headers(reason, reason_class, msg.subject, msg.metadata.sequence.stream)
        try:
            await self._js.publish(DEADLETTER_SUBJECT, msg.data, headers=headers)
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            delay = self._backoff.next()
            log.warning("dead letter for stream seq %s not published (%r); retrying in %.1f s", sequence, exc, delay)
            return delay
        await _settle(msg.term)
        self._counts["dead_lettered"] += 1
        self.dead_letters[reason_class] += 1
        self._log_dead_letter(sequence, msg.subject, headers[REASON_HEADER])
        return 0.0

    def _log_dead_letter(self, sequence: str, subject: str, reason: str) -> None:
        """Every dead letter at debug level; a warning at most every 10 s, with the total."""
        log.debug("dead-lettered stream seq %s from %s: %s", sequence, subject, reason)
        now = time.monotonic()
        if now - self._last_dead_letter_warning >= 10.0:
            self._last_dead_letter_warning = now
            log.warning("dead-lettered stream seq %s from %s (%d so far): %s; see %s",
                        sequence, subject, self._counts["dead_lettered"], reason, DEADLETTER_SUBJECT)

    async def _nak_all(self, messages: list[Msg], delay: float) -> None:
        for msg in messages:
            await _settle(msg.nak, delay)
        self._counts["naks"] += len(messages)


def dead_letter_headers(reason: str, reason_class: str, subject: str, sequence: int) -> dict[str, str]:
    """The headers of a dead letter: why (text and class), and where the message came from."""
    return {
        REASON_HEADER: _header_value(reason),
        REASON_CLASS_HEADER: reason_class,
        SUBJECT_HEADER: subject,
        SEQUENCE_HEADER: str(sequence),
        Header.MSG_ID: f"deadletter/{STREAM_NAME}/{sequence}",  # redelivery stays one copy
    }


def _decode(msg: Msg) -> FlowBatch | MessageError:
    try:
        return decode_message(msg.data)
    except MessageError as exc:
        return exc


class _Lookahead:
    """The messages of a batch decoded one ahead: ``prepare(i)`` while message i - 1 is stored."""

    def __init__(self, messages: list[Msg]) -> None:
        self.messages = messages
        self._ready: dict[int, FlowBatch | MessageError] = {}

    def prepare(self, index: int) -> None:
        if index < len(self.messages) and index not in self._ready:
            self._ready[index] = _decode(self.messages[index])

    def forget(self, index: int, count: int) -> None:
        for at in range(index, index + count):
            self._ready.pop(at, None)

    def peek(self, index: int) -> FlowBatch | MessageError:
        self.prepare(index)
        return self._ready[index]

    def take(self, index: int) -> FlowBatch | MessageError:
        self.prepare(index)
        return self._ready.pop(index)


async def _overlapped(write: Awaitable[None], meanwhile: Callable[[], None] | None) -> None:
    """Await ``write``, running ``meanwhile`` once it has started (in its thread, for the real stores)."""
    started = asyncio.ensure_future(write)
    if meanwhile is not None:
        await asyncio.sleep(0)
        meanwhile()
    await started


async def _settle(action: Callable[..., Awaitable[None]], *args: float) -> None:
    """Ack/nak/term; if the connection is gone the server redelivers after ``ack_wait``."""
    try:
        await action(*args)
    except (nats.errors.Error, OSError) as exc:
        log.debug("could not settle a message: %r", exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, for logs and dead-letter reasons."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _header_value(text: str, limit: int = 400) -> str:
    """One printable line: NATS headers cannot carry line breaks."""
    return _UNPRINTABLE.sub("?", text)[:limit]
