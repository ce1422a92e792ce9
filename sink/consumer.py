"""The sink's consumer loop: JetStream pull consumer in, ``Store.write`` out.

Every sink process binds to the same durable pull consumer (``connstats-sink``), so the
server spreads messages over them; that is how the sink scales out. For each message:

* decoded and stored   -> ``ack`` (only after ``store.write`` returned);
* ``StoreUnavailable`` -> ``nak`` it and the rest of the batch with a delay that doubles
  on each consecutive failure (0.5 s .. 30 s), and fetch nothing for that long;
* ``MessageError`` (or a ``StoreError`` that retrying cannot fix) -> copy the payload to
  ``connstats.v1.deadletter`` with the reason and origin in headers, then ``term`` it.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header

from connstats.probe.errors import MessageError, StoreError, StoreUnavailable, TransportError
from connstats.probe.record import decode_message
from connstats.probe.subjects import (
    DEADLETTER_SUBJECT, DEFAULT_DURABLE, FLOWS_WILDCARD, STREAM_NAME, StreamSettings,
    deadletter_stream_config, ensure_stream, flow_stream_config, sink_consumer_config,
)
from connstats.sink.store import Store

log = logging.getLogger(__name__)

REASON_HEADER = "Connstats-Reason"
SUBJECT_HEADER = "Connstats-Subject"
SEQUENCE_HEADER = "Connstats-Stream-Seq"
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class ConsumerSettings:
    durable: str = DEFAULT_DURABLE
    batch: int = 64  # messages per fetch
    fetch_timeout: float = 1.0  # seconds a fetch waits for the first message
    ack_wait: float = 30.0  # the server redelivers a message not acked within this
    max_ack_pending: int = 1024
    backoff_min: float = 0.5  # after the first StoreUnavailable
    backoff_max: float = 30.0


@dataclass(frozen=True)
class ConsumerStats:
    stored_messages: int
    stored_records: int
    dead_lettered: int
    store_errors: int  # write attempts that raised
    naks: int  # messages handed back for later (store unavailable, dead letter not publishable)


class Backoff:
    """Delays that double on each failure, up to a cap, and start over after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class FlowConsumer:
    """Consumes flow messages into a ``Store``; ``start()``, ``consume_forever(stop)``, ``close()``."""

    def __init__(self, nc: Client, store: Store, settings: ConsumerSettings | None = None,
                 stream: StreamSettings | None = None) -> None:
        self.nc = nc
        self.store = store
        self.settings = settings or ConsumerSettings()
        self._stream = stream or StreamSettings()
        self._js = nc.jetstream()
        self._sub: Any = None
        self._backoff = Backoff(self.settings.backoff_min, self.settings.backoff_max)
        self._last_dead_letter_warning = -1e9
        self._counts = dict(stored_messages=0, stored_records=0, dead_lettered=0, store_errors=0, naks=0)

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

    @property
    def stats(self) -> ConsumerStats:
        return ConsumerStats(**self._counts)

    # -- the loop -----------------------------------------------------------------------

    async def consume_forever(self, stop: asyncio.Event) -> None:
        """Fetch and handle batches until ``stop`` is set; the batch in hand is finished."""
        while not stop.is_set():
            messages = await self.fetch_batch()
            pause = await self.handle_batch(messages)
            if pause:
                await _sleep_unless(stop, pause)

    async def fetch_batch(self) -> list[Msg]:
        try:
            return await self._sub.fetch(self.settings.batch, timeout=self.settings.fetch_timeout)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except (nats.errors.Error, OSError) as exc:  # reconnecting, server restarting
            log.debug("fetch failed: %r", exc)
            await asyncio.sleep(self.settings.fetch_timeout)
            return []

    async def handle_batch(self, messages: list[Msg]) -> float:
        """Handle messages in order; return how long to pause fetching (0 if none)."""
        for index, msg in enumerate(messages):
            delay = await self.handle(msg)
            if delay:
                await self._nak_all(messages[index:], delay)
                return delay
        return 0.0

    async def handle(self, msg: Msg) -> float:
        """Store, dead-letter or hand back one message; return a retry delay if handed back."""
        try:
            envelope, records = decode_message(msg.data)
        except MessageError as exc:
            return await self._dead_letter(msg, f"undecodable: {exc}")
        try:
            await self.store.write(envelope, records)
        except StoreUnavailable as exc:
            self._counts["store_errors"] += 1
            delay = self._backoff.next()
            log.warning("store unavailable (%s); retrying in %.1f s", exc, delay)
            return delay
        except StoreError as exc:
            self._counts["store_errors"] += 1
            return await self._dead_letter(msg, f"store refused: {exc}")
        except Exception:  # a store bug: keep the message, say where, go on
            self._counts["store_errors"] += 1
            delay = self._backoff.next()
            log.exception("store.write failed unexpectedly; retrying in %.1f s", delay)
            return delay
        self._backoff.reset()
        await _settle(msg.ack)
        self._counts["stored_messages"] += 1
        self._counts["stored_records"] += len(records)
        return 0.0

    # -- dead letters and naks -------------------------------------------------------------

    async def _dead_letter(self, msg: Msg, reason: str) -> float:
        """Copy the payload to the dead-letter subject, then ``term`` the original."""
        sequence = str(msg.metadata.sequence.stream)
        headers = {
            REASON_HEADER: _header_value(reason),
            SUBJECT_HEADER: msg.subject,
            SEQUENCE_HEADER: sequence,
            Header.MSG_ID: f"deadletter/{STREAM_NAME}/{sequence}",  # redelivery stays one copy
        }
        try:
            await self._js.publish(DEADLETTER_SUBJECT, msg.data, headers=headers)
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            delay = self._backoff.next()
            log.warning("dead letter for stream seq %s not published (%r); retrying in %.1f s", sequence, exc, delay)
            return delay
        await _settle(msg.term)
        self._counts["dead_lettered"] += 1
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


async def _settle(action: Any, *args: Any) -> None:
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


def _header_value(text: str, limit: int = 400) -> str:
    """One printable line: NATS headers cannot carry line breaks."""
    return _UNPRINTABLE.sub("?", text)[:limit]
