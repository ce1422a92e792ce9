"""``FlowSubscription``: flow messages in, whole intervals out; the one way a subscriber of
``connstats.v1.flows.<host>`` (the alert engine, ``connstats top``, the web page's live view,
and any new one: identity, DNS, quality, an IPFIX export) turns messages into intervals.

    message (subject, data) ─ decode_message ─ host_of_subject(subject) == envelope.host? ─ prepare
        ─ IntervalAssembler ─ on_interval(Interval), once per interval (complete, expired, or pushed out)

Two ways in:

- ``take(subject, data)`` for a subscriber that fetches messages itself (the alert engine's
  durable JetStream consumer acknowledges each one after it): decoded on the caller's
  thread, ``on_interval`` called before it returns; ``expire()`` from the caller's timer.
- ``start(nc, subject)`` / ``close()``: a core NATS subscription (core NATS hands
  JetStream-stored messages to subscribers too) with a bounded queue (a full one drops new
  messages, counted in ``dropped``), the decoding in a worker thread so that a large
  message never stalls the event loop, and a timer for ``expire()``. ``on_interval`` runs on
  the event loop; an exception from it is logged and the subscription goes on.

A message that does not decode, or whose envelope's host is not its subject's (a probe
publishes only its own host's flows), is counted in ``rejected`` and skipped. ``prepare``
(run with the decoding, in the worker thread under ``start``) turns each decoded
``FlowBatch`` into what the subscriber wants to hold (e.g. numpy columns); without it the
intervals hold ``FlowBatch`` chunks (``Interval.batch()`` joins them).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Generic, TypeVar, overload

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .errors import MessageError
from .flow_batch import FlowBatch
from .intervals import Chunk, Interval, IntervalAssembler
from .messaging import FLOWS_WILDCARD, host_mismatch
from .wire import decode_message

__all__ = ["FLOW_QUEUE", "FlowSubscription"]

log = logging.getLogger(__name__)

FLOW_QUEUE = 256  # messages waiting to be decoded (``start``) before new ones are dropped
EXPIRY_TICK = 1.0  # seconds between two ``expire()`` under ``start``

C = TypeVar("C", bound=Chunk)


class FlowSubscription(Generic[C]):
    """Flow messages to whole intervals for one subscriber (see the module's text)."""

    @overload
    def __init__(self: FlowSubscription[FlowBatch], on_interval: Callable[[Interval[FlowBatch]], object], *,
                 assembler: IntervalAssembler[FlowBatch] | None = None) -> None: ...

    @overload
    def __init__(self, on_interval: Callable[[Interval[C]], object], *, prepare: Callable[[FlowBatch], C],
                 assembler: IntervalAssembler[C] | None = None) -> None: ...

    def __init__(self, on_interval: Callable[[Interval[Any]], object], *,
                 prepare: Callable[[FlowBatch], Any] | None = None,
                 assembler: IntervalAssembler[Any] | None = None) -> None:
        self.on_interval = on_interval
        self.prepare: Callable[[FlowBatch], C] = prepare if prepare is not None else _as_it_is
        self.assembler = assembler if assembler is not None else IntervalAssembler()
        self.rejected = 0  # messages skipped: undecodable, or their host not their subject's
        self.dropped = 0  # messages dropped by ``start``'s subscription: its queue was full
        self._messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(FLOW_QUEUE)
        self._active: Callable[[], bool] | None = None
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- messages fetched by the caller ------------------------------------------------------

    def read(self, subject: str, data: bytes) -> C:
        """One message as a chunk: decoded, its host checked against ``subject``'s, prepared;
        ``MessageError`` saying why not. Keeps no state (safe from any thread)."""
        batch = decode_message(data)
        wrong = host_mismatch(subject, batch.envelope.host)
        if wrong:
            raise MessageError(wrong)
        return self.prepare(batch)

    def take(self, subject: str, data: bytes) -> bool:
        """Read one message and add it; False (and ``rejected`` counted) if it was skipped.
        ``on_interval`` runs before this returns, for each interval the chunk made ready; an
        exception from it is the caller's."""
        try:
            chunk = self.read(subject, data)
        except MessageError as exc:
            self._reject(subject, exc)
            return False
        self.add(chunk)
        return True

    def add(self, chunk: C) -> None:
        """Add one chunk read already; ``on_interval`` for each interval it made ready."""
        for interval in self.assembler.add(chunk):
            self.on_interval(interval)

    def expire(self) -> None:
        """``on_interval`` for each interval that waited for its missing chunks long enough."""
        for interval in self.assembler.expired():
            self.on_interval(interval)

    # -- a core NATS subscription ------------------------------------------------------------

    async def start(self, nc: Client, subject: str = FLOWS_WILDCARD, *, queue: int = FLOW_QUEUE,
                    tick: float = EXPIRY_TICK, active: Callable[[], bool] | None = None) -> None:
        """Subscribe to ``subject`` and assemble what arrives until ``close()``. While
        ``active`` returns False, messages are dropped unread (nobody wants them)."""
        self._messages = asyncio.Queue(queue)
        self._active = active
        self._subscription = await nc.subscribe(subject, cb=self._received, pending_msgs_limit=queue * 4,
                                                pending_bytes_limit=1 << 30)
        self._tasks = [asyncio.create_task(self._read_forever(), name=f"flows from {subject}"),
                       asyncio.create_task(self._expire_forever(tick), name=f"flow intervals of {subject} expire")]

    async def close(self) -> None:
        """Stop the subscription and its tasks (intervals still waiting are not handed out)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):  # the connection closed first
                await subscription.unsubscribe()

    async def _received(self, msg: Msg) -> None:
        if self._active is not None and not self._active():
            return
        try:
            self._messages.put_nowait((msg.subject, msg.data))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _read_forever(self) -> None:
        while True:
            subject, data = await self._messages.get()
            try:
                chunk = await asyncio.to_thread(self.read, subject, data)
            except MessageError as exc:
                self._reject(subject, exc)
                continue
            self._guarded(self.add, chunk)

    async def _expire_forever(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self._guarded(self.expire)

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception:  # the subscriber's trouble with one interval must not end the subscription
            log.exception("flow subscription: handing out an interval failed")

    def _reject(self, subject: str, exc: MessageError) -> None:
        self.rejected += 1
        log.debug("flow message on %s skipped: %s", subject, exc)


def _as_it_is(batch: FlowBatch) -> Any:
    return batch
