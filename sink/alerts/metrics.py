"""The alert engine's self-metrics, read from its ``AlertStats`` at scrape time.

    build_alerts ─ AlertMetrics(engine, durable), registered on the Telemetry by build_alerts
      AlertService.run ─ metrics.watching(nc, js, queues): while the engine runs, the
                 durable consumer's info (exists? num_pending, num_ack_pending) every
                 ``refresh_every`` s (every 0.5 s while it does not exist yet); never per message
      telemetry.registry ─> collect(): evaluations, intervals, alerts firing by rule,
                           notifications sent, failed and dropped and queued by target kind
      telemetry /readyz  ─> "alerts": NATS connected and the durable consumer exists

Notifications are labelled by the kind of target (``nats`` or ``webhook``, every
``--webhook`` summed), never by URL: a URL may carry credentials.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import AsyncIterator, Iterable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connstats.probe.contract import STREAM_NAME
from connstats.probe.runtime.telemetry import refreshing
from connstats.sink.metrics import consumer_gauge

from .engine import AlertEngine
from .notify import NatsTarget, NotificationQueue

log = logging.getLogger(__name__)

TARGET_KINDS = ("nats", "webhook")
WAITING_REFRESH = 0.5  # seconds between consumer checks while the consumer does not exist


def target_kind(name: str) -> str:
    """``nats`` for the NATS target, ``webhook`` for any webhook (named by its URL)."""
    return "nats" if name == NatsTarget.name else "webhook"


def by_kind(counts: Counter) -> dict[str, int]:
    totals = dict.fromkeys(TARGET_KINDS, 0)
    for name, count in counts.items():
        totals[target_kind(name)] += count
    return totals


class AlertMetrics:
    """The collector and readiness check of one alert engine; see the module docstring."""

    def __init__(self, engine: AlertEngine, durable: str, refresh_every: float = 5.0) -> None:
        self.engine = engine
        self.durable = durable
        self.refresh_every = refresh_every
        self.nc: Client | None = None
        self.queues: Sequence[NotificationQueue] = ()
        self.consumer_exists = False
        self.pending: int | None = None  # None until the consumer info was read once
        self.ack_pending: int | None = None

    @contextlib.asynccontextmanager
    async def watching(self, nc: Client, js, queues: Sequence[NotificationQueue]) -> AsyncIterator[None]:
        """Read the queues' depths and refresh the consumer's state while inside."""
        self.nc, self.queues = nc, queues
        try:
            async with refreshing(lambda: self.refresh(js), self._refresh_every, "connstats-alert-metrics"):
                yield
        finally:
            self.consumer_exists = False

    def _refresh_every(self) -> float:
        return self.refresh_every if self.consumer_exists else WAITING_REFRESH

    async def refresh(self, js) -> None:
        try:
            info = await js.consumer_info(STREAM_NAME, self.durable)
        except nats.js.errors.NotFoundError:
            self.consumer_exists = False
            return
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            log.debug("consumer info for the alert metrics failed: %r", exc)
            return
        self.consumer_exists = True
        self.pending, self.ack_pending = info.num_pending, info.num_ack_pending

    def not_ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "NATS is not connected"
        if not self.consumer_exists:
            return f"the durable consumer {self.durable} does not exist yet (it needs the stream {STREAM_NAME})"
        return None

    def collect(self) -> Iterable[Metric]:
        stats = self.engine.stats
        yield _counter("connstats_alert_evaluations", "Evaluations of every rule (per interval and per tick)",
                       stats.evaluations)
        yield _counter("connstats_alert_intervals", "Intervals evaluated (complete, or timed out with chunks "
                       "missing)", stats.intervals)
        yield _counter("connstats_alert_incomplete_intervals", "Of those: evaluated without all their chunks",
                       stats.incomplete_intervals)
        yield _counter("connstats_alert_undecodable_messages", "Flow messages skipped: undecodable, or the "
                       "host not its subject's", stats.undecodable)
        yield _counter("connstats_alert_rule_errors", "Times a rule's kind raised (the other rules went on)",
                       stats.rule_errors)
        firing = GaugeMetricFamily("connstats_alerts_firing", "Alerts firing now", labels=["rule"])
        for rule in self.engine.rules:
            firing.add_metric([rule.name], stats.firing_by_rule.get(rule.name, 0))
        yield firing
        yield _by_target("connstats_alert_notifications", "Notifications delivered", stats.sent)
        yield _by_target("connstats_alert_notification_failures", "Delivery attempts that failed "
                         "(retried, or a permanent refusal that dropped them)", stats.failed)
        yield _by_target("connstats_alert_notifications_dropped", "Notifications given up on: the queue was "
                         "full, or the target refused them for good", stats.dropped)
        queued = GaugeMetricFamily("connstats_alert_queued_notifications", "Notifications waiting in the "
                                   "targets' queues", labels=["target"])
        for kind, depth in by_kind(Counter({q.target.name: q.depth for q in self.queues})).items():
            queued.add_metric([kind], depth)
        yield queued
        yield consumer_gauge("connstats_alert_consumer_pending", "Flow messages the engine's durable "
                              "consumer has not delivered yet (num_pending)", self.durable, self.pending)
        yield consumer_gauge("connstats_alert_consumer_ack_pending", "Delivered and not yet acknowledged "
                              "(num_ack_pending)", self.durable, self.ack_pending)
        yield _counter("connstats_alert_nats_reconnects", "Times the engine's NATS connection came back",
                       self.nc.stats["reconnects"] if self.nc is not None else 0)


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _by_target(name: str, documentation: str, counts: Counter) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["target"])
    for kind, count in by_kind(counts).items():
        family.add_metric([kind], count)
    return family

