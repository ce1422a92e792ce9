"""The running engine: flow messages in from JetStream, alerts out, and the firing list on
request.

    CONNSTATS ── durable pull consumer connstats-alerts (connstats.v1.flows.>) ──> FlowSubscription.take
        (decode, host check, chunks put together) ──> AlertEngine.on_interval ──┐
    timer (every ``tick`` s) ──> expired intervals, AlertEngine.tick ────────────┤
                                                                         v
        NotificationQueue(NatsTarget)     -> connstats.v1.alerts.<host> (stream CONNSTATS_ALERTS)
        NotificationQueue(WebhookTarget)  -> POST <url>/api/v2/alerts, one queue per URL
    connstats.v1.ctl._alerts.firing (request/reply) <- firing_alerts(nc)

The durable consumer starts with the messages stored from the moment the engine started
(``CLOCK_MARGIN`` before it), even when it is created later, once the first probe or sink
made the stream: an interval published in between is not missed. It resumes where it left
off after a restart, so an engine that was away evaluates what it missed (windows still
follow the intervals' own times). A message that does not decode, or whose host is not its
subject's, is counted and skipped.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from connstats.probe.contract import (
    CHUNK_TIMEOUT,
    FLOWS_WILDCARD,
    STREAM_NAME,
    AlertMessage,
    FiringAlerts,
    FlowBatch,
    FlowSubscription,
    Interval,
    IntervalAssembler,
    NatsOptions,
    StreamSettings,
    TransportError,
    connect,
    encode_firing,
    ensure_stream,
)
from connstats.probe.runtime.backoff import Backoff

from .engine import AlertEngine
from .metrics import AlertMetrics
from .notify import NatsTarget, NotificationQueue, alerts_stream_config
from .query import FIRING_SUBJECT, RESPONDERS

log = logging.getLogger(__name__)

DURABLE = "connstats-alerts"


@dataclass(frozen=True)
class ServiceSettings:
    durable: str = DURABLE
    tick: float = 1.0  # seconds between timer evaluations
    chunk_timeout: float = CHUNK_TIMEOUT  # an interval missing chunks is evaluated after this (s)
    batch: int = 64  # messages per fetch
    queue_capacity: int = 1000  # alerts waiting per target
    webhook_timeout: float = 5.0  # seconds per POST
    drain_timeout: float = 3.0  # on stop: how long queued alerts may take to go out


CLOCK_MARGIN = timedelta(seconds=2)  # a server clock a little behind ours loses no message


def consumer_config(durable: str, since: datetime) -> ConsumerConfig:
    """The durable consumer, when it is made: the messages the stream stored from ``since`` on."""
    return ConsumerConfig(durable_name=durable, filter_subject=FLOWS_WILDCARD,
                          deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since - CLOCK_MARGIN,
                          ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=1024, max_deliver=-1)


class AlertService:
    def __init__(self, engine: AlertEngine, nats: NatsOptions, webhooks: list[NotificationQueue],
                 settings: ServiceSettings = ServiceSettings(), *, stream: StreamSettings = StreamSettings(),
                 metrics: AlertMetrics | None = None) -> None:
        self.engine = engine
        self.nats = nats
        self.webhooks = webhooks
        self.settings = settings
        self.stream = stream  # its replicas: CONNSTATS_ALERTS's (--stream-replicas)
        self.metrics = metrics
        self.flows = FlowSubscription(self._evaluate, assembler=IntervalAssembler(settings.chunk_timeout))
        self.queues: list[NotificationQueue] = list(webhooks)
        self.ready = asyncio.Event()
        self.started = datetime.now(timezone.utc)  # run() sets it again: the consumer starts there

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (``TransportError`` if NATS is not there), then evaluate until ``stop``."""
        self.started = datetime.now(timezone.utc)
        nc = await connect(self.nats)
        tasks: list[asyncio.Task] = []
        try:
            js = nc.jetstream(timeout=self.nats.request_timeout)
            await ensure_stream(js, alerts_stream_config(self.stream))
            self.queues = [NotificationQueue(NatsTarget(js), self.engine.stats, self.settings.queue_capacity),
                           *self.webhooks]
            await nc.subscribe(FIRING_SUBJECT, queue=RESPONDERS, cb=self._answer)
            subscription = await self._subscribe(js, stop, wait=False)  # None: no flow stream yet
            tasks = [asyncio.create_task(q.run(), name=f"alerts to {q.target.name}") for q in self.queues]
            tasks += [asyncio.create_task(self._consume(js, subscription, stop), name="alerts consumer"),
                      asyncio.create_task(self._tick(stop), name="alerts timer")]
            log.info("alert engine: %d rules on %s as host %s", len(self.engine.rules), FLOWS_WILDCARD,
                     self.engine.host)
            async with self._watched(nc, js):
                self.ready.set()
                await _until_stopped(stop, tasks)
            self.engine.save(force=True)
            await asyncio.gather(*(q.drain(self.settings.drain_timeout) for q in self.queues))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for queue in self.queues:
                await queue.target.close()
            await nc.close()

    def _watched(self, nc, js) -> contextlib.AbstractAsyncContextManager:
        if self.metrics is None:
            return contextlib.nullcontext()
        return self.metrics.watching(nc, js, self.queues)

    def _send(self, alerts: list[AlertMessage]) -> None:
        for alert in alerts:
            log.info("alert %s %s %s value %s", alert.state, alert.rule,
                     " ".join(f"{k}={v}" for k, v in alert.labels.items() if k not in ("alertname", "severity")),
                     alert.value)
        for queue in self.queues:
            queue.put(alerts)

    async def _subscribe(self, js, stop: asyncio.Event, wait: bool = True):
        """The durable consumer; waits for the flow stream, which the first probe or sink
        creates (``wait`` False: None at once if there is none)."""
        waiting = False
        while not stop.is_set():
            try:
                return await js.pull_subscribe(FLOWS_WILDCARD, durable=self.settings.durable, stream=STREAM_NAME,
                                               config=consumer_config(self.settings.durable, self.started))
            except nats.js.errors.NotFoundError:
                if not wait:
                    return None
                if not waiting:
                    log.info("alert engine: waiting for the stream %s (the first probe or sink creates it)",
                             STREAM_NAME)
                waiting = True
                await asyncio.sleep(0.5)
            except (nats.errors.Error, OSError) as exc:
                raise TransportError(f"cannot create the consumer {self.settings.durable} on {STREAM_NAME}: "
                                     f"{exc}; check the alert user's permissions") from exc
        return None

    async def _consume(self, js, subscription, stop: asyncio.Event) -> None:
        subscription = subscription or await self._subscribe(js, stop)
        backoff = Backoff()
        while not stop.is_set():
            try:
                messages = await subscription.fetch(self.settings.batch, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except (nats.errors.Error, OSError) as exc:
                delay = backoff.next()
                log.warning("alert engine: fetch failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            for msg in messages:
                self._take(msg)
                await _ack(msg)

    def _take(self, msg: Msg) -> None:
        try:
            self._take_message(msg)
        except Exception as exc:  # odd data must not stop the engine: logged, counted, skipped
            self.engine.stats.rule_errors += 1
            log.warning("alert engine: message on %s skipped: %s: %s", msg.subject, type(exc).__name__, exc)
            log.debug("alert engine: message skipped", exc_info=True)

    def _take_message(self, msg: Msg) -> None:
        if not self.flows.take(msg.subject, msg.data):  # undecodable, or not its subject's host
            self.engine.stats.undecodable += 1

    def _evaluate(self, interval: Interval[FlowBatch]) -> None:
        if not interval.complete:
            self.engine.stats.incomplete_intervals += 1
        self._send(self.engine.on_interval(interval.chunks))

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.settings.tick)
            self.flows.expire()
            self._send(self.engine.tick())

    async def _answer(self, msg: Msg) -> None:
        if msg.reply:
            body = FiringAlerts(engine=self.engine.host, alerts=self.engine.firing())
            try:
                await msg.respond(encode_firing(body))
            except nats.errors.Error as exc:
                log.debug("alert engine: cannot answer %s: %r", msg.subject, exc)


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task]) -> None:
    """Wait for ``stop``; a task that fails (the consumer cannot be made) stops the engine."""
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            raise exc


async def _ack(msg: Msg) -> None:
    try:
        await msg.ack()
    except nats.errors.Error as exc:  # redelivered later: the interval is evaluated again
        log.debug("alert engine: ack failed: %r", exc)
