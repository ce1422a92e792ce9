"""The sink's self-metrics, read from the consumer's counters at scrape time.

    build_sink ─ SinkMetrics(durable), registered on the Telemetry by build_sink
      consume_flows ─ metrics.watching(nc, consumer, store): while the consumer runs,
                      every ``refresh_every`` s: the backlog (sink/backlog.py: num_pending,
                      num_ack_pending, the lag in seconds; LagWarning logs when it is more than
                      ``lag_warning_intervals`` intervals) and a store ping (for /readyz);
                      never per message
      FlowConsumer(on_write=metrics.write_seconds.observe): one observation per write (one
                      message, or a run of them in one transaction)
      telemetry.registry ─> collect(): stored messages and records, dead letters by reason
                           class, store errors, naks, store full (gauge, pauses), lag,
                           NATS reconnects
      telemetry /readyz  ─> "sink": NATS connected and the store answering
"""
from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator, Iterable

from nats.aio.client import Client
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connstats.probe.runtime.telemetry import refreshing

from .backlog import DEFAULT_LAG_WARNING_INTERVALS, LagWarning, read_backlog_quietly
from .consumer import DEAD_LETTER_CLASSES, FlowConsumer
from .store import Store

log = logging.getLogger(__name__)

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SinkMetrics:
    """The collector and readiness check of one sink; see the module docstring."""

    def __init__(self, durable: str, refresh_every: float = 5.0,
                 lag_warning_intervals: float = DEFAULT_LAG_WARNING_INTERVALS) -> None:
        self.durable = durable
        self.refresh_every = refresh_every
        self.nc: Client | None = None
        self.consumer: FlowConsumer | None = None
        self.store_answers = False
        self.pending: int | None = None  # None until the consumer info was read once
        self.ack_pending: int | None = None
        self.lag_seconds: float | None = None
        self.lag_warning = LagWarning(lag_warning_intervals)
        self.write_seconds = Histogram("connstats_sink_write_duration_seconds", "One write into the store (a "
                                       "message, or a run of them in one transaction)", buckets=WRITE_BUCKETS,
                                       registry=None)  # collect() yields it

    @contextlib.asynccontextmanager
    async def watching(self, nc: Client, consumer: FlowConsumer, store: Store) -> AsyncIterator[None]:
        """Read ``consumer``'s counters and refresh lag and store state while inside."""
        self.nc, self.consumer, self.store_answers = nc, consumer, True  # the store answered at start
        try:
            async with refreshing(lambda: self.refresh(nc, store), lambda: self.refresh_every,
                                  "connstats-sink-metrics"):
                yield
        finally:
            self.store_answers = False

    async def refresh(self, nc: Client, store: Store) -> None:
        backlog = await read_backlog_quietly(nc.jetstream(), self.durable)
        if backlog is not None:
            self.pending, self.ack_pending, self.lag_seconds = backlog.pending, backlog.ack_pending, backlog.lag_seconds
            self.lag_warning.observe(backlog)
        try:
            await store.ping()
            self.store_answers = True
        except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
            log.debug("store ping for /readyz failed: %r", exc)
            self.store_answers = False

    def not_ready(self) -> str | None:
        if self.nc is None or not self.nc.is_connected:
            return "NATS is not connected"
        if not self.store_answers:
            return "the store does not answer"
        return None

    def collect(self) -> Iterable[Metric]:
        stats = self.consumer.stats if self.consumer is not None else None
        value = (lambda name: getattr(stats, name)) if stats is not None else (lambda name: 0)
        yield _counter("connstats_sink_messages", "Flow messages stored", value("stored_messages"))
        yield _counter("connstats_sink_records", "Records stored", value("stored_records"))
        dead = CounterMetricFamily("connstats_sink_dead_letters", "Messages moved to the dead-letter stream",
                                   labels=["reason"])
        for reason in DEAD_LETTER_CLASSES:
            dead.add_metric([reason], self.consumer.dead_letters[reason] if self.consumer is not None else 0)
        yield dead
        yield _counter("connstats_sink_store_errors", "Store writes that raised", value("store_errors"))
        yield _counter("connstats_sink_naks", "Messages handed back for redelivery", value("naks"))
        yield GaugeMetricFamily("connstats_sink_store_full", "1 while consumption is paused because the store "
                                "is full (disk, quota), else 0",
                                value=int(self.consumer is not None and self.consumer.full_since is not None))
        yield _counter("connstats_sink_store_full_pauses", "Pauses of consumption because a write found the "
                       "store full", value("store_full_pauses"))
        yield consumer_gauge("connstats_sink_consumer_pending", "Messages the durable consumer has not "
                              "delivered yet (num_pending)", self.durable, self.pending)
        yield consumer_gauge("connstats_sink_consumer_ack_pending", "Messages delivered and not yet "
                              "acknowledged (num_ack_pending)", self.durable, self.ack_pending)
        yield consumer_gauge("connstats_sink_consumer_lag_seconds", "Age of the oldest flow message the "
                              "consumer has not acknowledged (0 when none waits)", self.durable, self.lag_seconds)
        yield _counter("connstats_sink_nats_reconnects", "Times the sink's NATS connection came back",
                       self.nc.stats["reconnects"] if self.nc is not None else 0)
        yield from self.write_seconds.collect()


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def consumer_gauge(name: str, documentation: str, consumer: str, value: float | None) -> Metric:
    gauge = GaugeMetricFamily(name, documentation, labels=["consumer"])
    if value is not None:
        gauge.add_metric([consumer], value)
    return gauge
